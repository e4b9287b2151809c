"""The engines' hand-written autograd Functions as opaque operators to ``torch.compile`` and ``torch.export``.

The fast forms write into preallocated buffers (``out=`` into views, in-place updates) and some choose their
algorithm from the data; a tracer can follow neither. :func:`traceable` wraps such a Function so that eager
calls run it as they always did, while a tracer records one custom operator, ``rnnzoo::engine_forward``,
whose kernel is the same Function, and whose backward, ``rnnzoo::engine_backward``, runs the Function's own
backward. The compiled graph around an engine (projections, gates, norms) is fused as usual; the engine
runs its eager kernel, so compiled and eager outputs agree to rounding.

Under tracing the operator keeps only its inputs for the backward, which recomputes the Function's forward
before running its backward: one more forward pass, and no intermediate kept between the two.

The Function's non-tensor arguments (chunk sizes, flags) travel as the operator's ``key``, the literal
``repr`` of their values, so they must be Python literals (numbers, bools, strings, ``None``).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["traceable"]

# name -> (the Function, its shape function: the same arguments -> empty outputs of the right shapes and dtypes)
_FUNCTIONS: dict[str, tuple[type[torch.autograd.Function], Callable[..., Sequence[Tensor]]]] = {}


class _Context:
    """What a Function's ``forward`` and ``backward`` read from and write to ``ctx``, outside autograd."""

    def __init__(self, needs_input_grad: Sequence[bool]) -> None:
        self.needs_input_grad = tuple(needs_input_grad)
        self.saved_tensors: tuple[Tensor | None, ...] = ()

    def save_for_backward(self, *tensors: Tensor | None) -> None:
        self.saved_tensors = tensors

    def set_materialize_grads(self, value: bool) -> None:
        pass


def _arguments(key: str, tensors: Sequence[Tensor]) -> list:
    """The Function's arguments, in order, from the operator's tensors and the constants in ``key``."""
    is_tensor, constants = ast.literal_eval(key)
    tensors, constants = iter(tensors), iter(constants)
    return [next(tensors) if t else next(constants) for t in is_tensor]


def _fresh(outputs: Sequence[Tensor], inputs: Sequence[Tensor]) -> list[Tensor]:
    """``outputs`` contiguous (as the shape functions describe them) and in storage of their own: an operator's
    outputs may not alias its inputs."""
    taken = {t.untyped_storage().data_ptr() for t in inputs}
    return [
        o.clone(memory_format=torch.contiguous_format) if o.untyped_storage().data_ptr() in taken else o.contiguous()
        for o in outputs
    ]


def _run_forward(name: str, key: str, tensors: Sequence[Tensor], ctx: _Context) -> tuple[Tensor, ...]:
    function, _ = _FUNCTIONS[name]
    with torch.no_grad():
        outputs = function.forward(ctx, *_arguments(key, tensors))
    return outputs if isinstance(outputs, tuple) else (outputs,)


@torch.library.custom_op("rnnzoo::engine_forward", mutates_args=())
def _engine_forward(name: str, key: str, tensors: Sequence[Tensor]) -> list[Tensor]:
    is_tensor = ast.literal_eval(key)[0]
    outputs = _run_forward(name, key, tensors, _Context(is_tensor))
    return _fresh(outputs, tensors)


@_engine_forward.register_fake
def _(name: str, key: str, tensors: Sequence[Tensor]) -> list[Tensor]:
    _, shapes = _FUNCTIONS[name]
    return [t.new_empty(t.shape) for t in shapes(*_arguments(key, tensors))]


@torch.library.custom_op("rnnzoo::engine_backward", mutates_args=())
def _engine_backward(
    name: str, key: str, tensors: Sequence[Tensor], grads: Sequence[Tensor], needs: Sequence[bool]
) -> list[Tensor]:
    """The gradient of every tensor input: where ``needs`` is false an empty tensor, and zeros where the
    Function reports none."""
    function, _ = _FUNCTIONS[name]
    is_tensor = ast.literal_eval(key)[0]
    tensor_needs = iter(needs)
    ctx = _Context([next(tensor_needs) if t else False for t in is_tensor])
    _run_forward(name, key, tensors, ctx)
    with torch.no_grad():
        got = function.backward(ctx, *(g.contiguous() for g in grads))  # as eager autograd hands them over
    got = [g for g, t in zip(got, is_tensor) if t]
    grads = [
        (g if g is not None else x.new_zeros(x.shape)) if need else x.new_empty(0)
        for g, x, need in zip(got, tensors, needs)
    ]
    return _fresh(grads, [*tensors, *grads])


@_engine_backward.register_fake
def _(name: str, key: str, tensors: Sequence[Tensor], grads: Sequence[Tensor], needs: Sequence[bool]) -> list[Tensor]:
    return [x.new_empty(x.shape) if need else x.new_empty(0) for x, need in zip(tensors, needs)]


def _setup_context(ctx, inputs: tuple, output: list[Tensor]) -> None:
    name, key, tensors = inputs
    ctx.name, ctx.key = name, key
    ctx.save_for_backward(*tensors)


def _backward(ctx, grads: list[Tensor]) -> tuple[None, None, list[Tensor | None]]:
    needs = list(ctx.needs_input_grad[2])
    got = _engine_backward(ctx.name, ctx.key, list(ctx.saved_tensors), list(grads), needs)
    return None, None, [g if need else None for g, need in zip(got, needs)]


_engine_forward.register_autograd(_backward, setup_context=_setup_context)


def traceable(
    function: type[torch.autograd.Function], shapes: Callable[..., Sequence[Tensor]]
) -> Callable[..., tuple[Tensor, ...]]:
    """``function.apply``, recorded by ``torch.compile`` and ``torch.export`` as one opaque operator.

    ``shapes`` takes the Function's arguments and returns tensors shaped, typed and placed like its outputs
    (their values are not read): the tracer's only view of the kernel. The Function's ``None`` arguments and
    every other non-tensor one must be Python literals.
    """
    name = f"{function.__module__}.{function.__qualname__}"
    _FUNCTIONS[name] = (function, shapes)

    def apply(*args) -> tuple[Tensor, ...]:
        if not torch.compiler.is_compiling():
            outputs = function.apply(*args)
            return outputs if isinstance(outputs, tuple) else (outputs,)
        is_tensor = tuple(isinstance(a, Tensor) for a in args)
        constants = tuple(a for a, t in zip(args, is_tensor) if not t)
        tensors = [a for a, t in zip(args, is_tensor) if t]
        return tuple(_engine_forward(name, repr((is_tensor, constants)), tensors))

    apply.__doc__ = function.__doc__
    return apply
