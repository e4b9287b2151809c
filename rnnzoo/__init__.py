"""rnnzoo: recurrent sequence models behind one API, each with a parallel and a recurrent form.

>>> import rnnzoo, torch
>>> layer = rnnzoo.create("mingru", d_model=32)
>>> y, state = layer(torch.randn(2, 10, 32))
>>> y_t, state = layer.step(torch.randn(2, 32), state)
"""

from . import layers as _layers  # noqa: F401  (registers the models)
from .registry import ModelInfo, create, list_models, model_info

__version__ = "0.1.0"
__all__ = ["ModelInfo", "create", "list_models", "model_info", "__version__"]
