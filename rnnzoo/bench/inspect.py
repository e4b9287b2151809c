"""``rnnzoo inspect``: plot a layer's implicit T×T operator ``M`` as heatmaps.

``M = layer.materialize(x)`` (see :meth:`rnnzoo.layers.SequenceLayer.materialize`) is the
lower-triangular matrix per group (head or channel) with ``mixer output = M @ V``: row ``t`` says
how much each earlier step ``s`` contributes to step ``t``. The layer is randomly initialised
from ``seed`` or loaded from a checkpoint (a ``state_dict`` saved with ``torch.save``, or a
``.safetensors`` file); the input is one sequence of ``N(0, 1)`` tokens drawn from ``seed``.
matplotlib (the Agg backend, no display) and safetensors are imported only when used.

>>> layer = build_layer("mingru", 16)
>>> M = operator(layer, random_input(layer, 32))  # (groups, 32, 32)
>>> plot_operator(M, [0, 1], "operator_mingru.png", "mingru")  # doctest: +SKIP
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..layers import SequenceLayer
from ..registry import create

__all__ = [
    "build_layer", "load_state_dict", "materializes", "operator", "parse_kwargs", "plot_operator", "random_input"
]  # fmt: skip


def parse_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> keyword arguments; values are Python literals (``2``, ``0.5``, ``True``),
    anything else is kept as a string (``mode=scan``)."""
    kwargs = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--kw expects key=value, got {item!r}")
        try:
            kwargs[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[key] = text
    return kwargs


def materializes(cls: type) -> bool:
    """Whether a layer class provides its operator (see ``SequenceLayer.has_operator``)."""
    return issubclass(cls, SequenceLayer) and cls.has_operator()


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A ``state_dict`` from a ``.safetensors`` file or a ``torch.save`` file (loaded with ``weights_only=True``).

    A ``ValueError`` naming the file for anything else: missing, truncated, corrupt, or not a dict of tensors
    (the loaders' own errors are of many library-specific kinds)."""
    try:
        if Path(path).suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (SafetensorError, UnpicklingError, EOFError, RuntimeError, OSError...)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise ValueError(f"cannot read checkpoint {path}: {reason}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path} is not a state_dict (a dict of tensors), got {type(state).__name__}")
    return state


def build_layer(
    name: str, d_model: int, kwargs: dict[str, Any] | None = None, checkpoint: str | Path | None = None, seed: int = 0
) -> SequenceLayer:
    """The registered layer ``name`` initialised from ``seed``, then loaded from ``checkpoint`` if given."""
    torch.manual_seed(seed)
    layer = create(name, d_model, **(kwargs or {}))
    if checkpoint is not None:
        layer.load_state_dict(load_state_dict(checkpoint))
    return layer.eval()


def random_input(layer: SequenceLayer, length: int, seed: int = 0) -> Tensor:
    """One sequence of ``N(0, 1)`` tokens, ``(1, length, d_model)``, in the layer's dtype."""
    gen = torch.Generator().manual_seed(seed)
    param = next(layer.parameters())
    return torch.randn(1, length, layer.d_model, generator=gen).to(param.device, param.dtype)


def operator(layer: SequenceLayer, x: Tensor) -> Tensor:
    """The operator of the first sequence of ``x``: ``(groups, T, T)``, without gradients."""
    with torch.no_grad():
        return layer.materialize(x)[0]


def plot_operator(M: Tensor, groups: Sequence[int], path: str | Path, title: str, log: bool = False) -> None:
    """Write a PNG with one heatmap per group ``g`` of ``M`` ``(groups, T, T)``, each with a colour bar.

    Linear scale: ``M[g]`` (its real part if complex) in a diverging map centred on 0. ``log``:
    ``log10 |M[g]|``. The upper triangle (``s > t``, always 0) and exact zeros under ``log`` are grey.
    """
    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    T = M.shape[-1]
    upper = np.triu(np.ones((T, T), dtype=bool), 1)
    fig = Figure(figsize=(4.4 * len(groups), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, g in zip(axes, groups):
        m = M[g].detach().cpu()
        if log:
            values, label, cmap, limits = torch.log10(m.abs()).double().numpy(), "log10 |M|", "viridis", {}
        else:
            values = (m.real if m.is_complex() else m).double().numpy()
            vmax = float(np.abs(values).max()) or 1.0
            label, cmap, limits = "Re M" if m.is_complex() else "M", "RdBu_r", {"vmin": -vmax, "vmax": vmax}
        data = np.ma.masked_array(values, mask=upper | ~np.isfinite(values))
        cmap = matplotlib.colormaps[cmap].with_extremes(bad="0.9")
        image = ax.imshow(data, cmap=cmap, interpolation="nearest", **limits)
        ax.set(title=f"group {g}", xlabel="source step s", ylabel="target step t")
        fig.colorbar(image, ax=ax, shrink=0.85, label=label)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
