"""The model registry: every layer by name, with its family, engine and paper.

>>> import rnnzoo
>>> layer = rnnzoo.create("mingru", d_model=64)
>>> [m.name for m in rnnzoo.list_models()]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

from torch import nn

__all__ = ["ModelInfo", "register", "create", "list_models", "model_info"]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of a model."""

    name: str
    cls: type[nn.Module]
    family: str  # e.g. "minimal RNN", "state-space model"
    engine: str  # the ops/ engine computing its recurrence
    paper: str  # short citation
    negative_eigenvalues: bool  # whether it takes `negative_eigenvalues=True`
    tier: int = 1  # MODELS.md's tier: 1 the first target, 2 what follows


_REGISTRY: dict[str, ModelInfo] = {}
L = TypeVar("L", bound=type)


def register(
    name: str, *, family: str, paper: str, engine: str | None = None, negative_eigenvalues: bool = False, tier: int = 1
) -> Callable[[L], L]:
    """Class decorator adding a layer to the registry under ``name``. ``engine`` is the name of the layer's
    engine adapter (``cls.engine.name``) for a layer on one, and must be given for a layer without one."""

    def add(cls: L) -> L:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered to {_REGISTRY[name].cls.__name__}")
        adapter = getattr(getattr(cls, "engine", None), "name", None)
        if (adapter is None) == (engine is None):
            raise ValueError(f"register({name!r}): give `engine` exactly when the class has no engine adapter")
        _REGISTRY[name] = ModelInfo(name, cls, family, engine or adapter, paper, negative_eigenvalues, tier)
        return cls

    return add


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; a ``ValueError`` listing valid names if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}") from None


def create(name: str, d_model: int, **kwargs) -> nn.Module:
    """Build the layer registered as ``name`` with ``d_model`` and model-specific keywords."""
    return model_info(name).cls(d_model, **kwargs)


def list_models() -> list[ModelInfo]:
    """Every registered model, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
