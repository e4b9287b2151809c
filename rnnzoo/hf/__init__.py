"""rnnzoo language models as Hugging Face ``transformers`` models (``pip install 'rnnzoo[hf]'``).

Importing this package registers :class:`RnnzooConfig` (``model_type="rnnzoo"``) and
:class:`RnnzooForCausalLM` with ``AutoConfig`` and ``AutoModelForCausalLM``, so a saved directory loads with
``AutoModelForCausalLM.from_pretrained(path)``. ``rnnzoo hf export`` / ``rnnzoo hf import``
(:mod:`rnnzoo.hf.convert`) turn an ``rnnzoo train`` run into such a directory and back. ``import rnnzoo``
alone does not import ``transformers``.
"""

from __future__ import annotations

try:
    from transformers import AutoConfig, AutoModelForCausalLM
except ImportError:
    raise ImportError("rnnzoo.hf needs Hugging Face transformers: pip install 'rnnzoo[hf]'") from None

from .cache import RnnzooCache
from .config import RnnzooConfig
from .model import RnnzooCausalLMOutput, RnnzooForCausalLM

AutoConfig.register(RnnzooConfig.model_type, RnnzooConfig, exist_ok=True)
AutoModelForCausalLM.register(RnnzooConfig, RnnzooForCausalLM, exist_ok=True)

__all__ = ["RnnzooCache", "RnnzooCausalLMOutput", "RnnzooConfig", "RnnzooForCausalLM"]
