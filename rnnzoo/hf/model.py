"""An rnnzoo causal LM as a Hugging Face model: ``save_pretrained`` / ``from_pretrained``, ``generate()``, and
a ``loss`` for ``labels`` in Hugging Face's convention.

>>> model = RnnzooForCausalLM(RnnzooConfig(vocab_size=256, mixer="gla", d_model=64))
>>> out = model(torch.randint(256, (2, 10)), labels=torch.randint(256, (2, 10)))   # out.loss, out.logits, out.cache
>>> model.generate(torch.randint(256, (1, 5)), max_new_tokens=20, do_sample=False)  # one step per new token

The wrapped :class:`~rnnzoo.models.SequenceModel` is ``model.model``: its parameters keep their names under
``model.`` (``model.blocks.0.mixer...``), so state dicts convert one to one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import GenerationMixin, PreTrainedModel
from transformers.generation.utils import ALL_CACHE_NAMES
from transformers.utils import ModelOutput

from ..models import SequenceModel
from .cache import RnnzooCache
from .config import RnnzooConfig

__all__ = ["RnnzooCausalLMOutput", "RnnzooForCausalLM", "causal_lm_loss"]

IGNORE_INDEX = -100  # labels equal to this are not scored (Hugging Face's convention)
# The keywords generate() hands the cache on under: `cache`; transformers before it knew that name (4.x) also needs
# `past_key_values`, the one cache its beam search reorders
CACHE_KWARGS = ("cache",) if "cache" in ALL_CACHE_NAMES else ("cache", "past_key_values")


@dataclass
class RnnzooCausalLMOutput(ModelOutput):
    """``loss`` (with ``labels``), ``logits`` ``(batch, time, vocab_size)`` and ``cache`` (the recurrent state
    after the input, an :class:`~rnnzoo.hf.RnnzooCache`; ``None`` with ``use_cache=False``)."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    cache: RnnzooCache | None = None


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy (float32) of each position's logits against the next position's label: ``labels`` are
    aligned with the input (``labels=input_ids`` trains next-token prediction) and ``-100`` is not scored."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=IGNORE_INDEX
    )


class RnnzooForCausalLM(PreTrainedModel, GenerationMixin):
    """A :class:`~rnnzoo.models.SequenceModel` causal LM (``self.model``) built from an :class:`RnnzooConfig`.

    ``forward`` runs the parallel form over ``input_ids``, continued from ``cache`` when given; a single token
    with a cache runs ``SequenceModel.step``. ``generate()`` thus costs one step per new token: the recurrent
    state is its cache (:class:`~rnnzoo.hf.RnnzooCache`, returned as ``outputs.cache``), which
    :meth:`prepare_inputs_for_generation` pairs with the tokens it has not seen.
    """

    config_class = RnnzooConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    accepts_loss_kwargs = False  # Trainer: the loss is a mean over this batch; it scales for gradient accumulation

    def __init__(self, config: RnnzooConfig) -> None:
        super().__init__(config)
        self.model = SequenceModel(**config.model_kwargs())
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing: every layer initialises its parameters in its constructor, as in ``SequenceModel`` (Hugging
        Face's default would overwrite them with its own scheme)."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """``False``: ``generate()`` must not make a key-value cache; the first forward returns the state."""
        return False

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: RnnzooCache | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> RnnzooCausalLMOutput | tuple:
        """Logits for ``input_ids`` ``(batch, time)``, after the tokens of ``cache`` if given.

        ``attention_mask`` ``(batch, time)`` or ``(batch, cache length + time)`` (Hugging Face's convention; its
        last ``time`` columns are read): 1 for a real token, 0 for padding, left or right; all ones is the same
        as none. ``labels`` ``(batch, time)`` adds ``loss`` (:func:`causal_lm_loss`). ``use_cache`` (default
        ``config.use_cache``) returns the state after the input as ``cache``. ``return_dict=False`` (default
        ``config.return_dict``) gives a tuple of the non-``None`` outputs. Other keywords are refused unless ``None`` or ``False``.
        """
        where = "RnnzooForCausalLM.forward"
        unsupported = sorted(k for k, v in kwargs.items() if v is not None and v is not False)
        if unsupported:
            raise TypeError(f"{where}: unsupported argument(s) {', '.join(unsupported)}")
        if cache is not None and not isinstance(cache, RnnzooCache):
            raise TypeError(f"{where}: `cache` must be an RnnzooCache (outputs.cache), got {type(cache).__name__}")
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            got = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"{where}: `input_ids` must be a tensor of shape (batch, time), got {got}")
        if labels is not None and (not isinstance(labels, Tensor) or labels.shape != input_ids.shape):
            got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"{where}: `labels` must have the shape of input_ids {tuple(input_ids.shape)}, got {got}")
        mask = _padding_mask(where, attention_mask, input_ids.shape)
        states = None if cache is None else cache.states
        if cache is not None and input_ids.shape[1] == 1 and mask is None:
            logits, states = self.model.step(input_ids[:, 0], states)
            logits = logits[:, None]
        elif mask is None:
            logits, states = self.model(input_ids, states)
        else:
            logits, states = self.model(input_ids, states, attention_mask=mask)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        length = input_ids.shape[1] + (0 if cache is None else cache.length)
        output = RnnzooCausalLMOutput(
            loss=None if labels is None else causal_lm_loss(logits, labels),
            logits=logits,
            cache=RnnzooCache(states, length) if use_cache else None,
        )
        return output if (self.config.return_dict if return_dict is None else return_dict) else output.to_tuple()

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        cache: RnnzooCache | None = None,
        attention_mask: Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The next forward's inputs in ``generate()``: the tokens ``cache`` has not seen (the whole prompt at
        first, then the one new token), with the mask. ``generate()``'s bookkeeping keywords (the next
        sequence length, whether this is the first iteration) are read from the cache instead."""
        if cache is not None:
            input_ids = input_ids[:, cache.length :]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "cache": cache, "use_cache": use_cache}

    def _update_model_kwargs_for_generation(
        self, outputs: RnnzooCausalLMOutput, model_kwargs: dict[str, Any], *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        """``generate()``'s bookkeeping after each forward, with ``outputs.cache`` carried to the next one under
        :data:`CACHE_KWARGS` (transformers 4 looks for its own cache names only, so would recompute the whole
        sequence at every token, and reorder no state in beam search)."""
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        if outputs.cache is not None:
            model_kwargs.update(dict.fromkeys(CACHE_KWARGS, outputs.cache))
        return model_kwargs


def _padding_mask(where: str, attention_mask: Tensor | None, shape: torch.Size) -> Tensor | None:
    """The last ``time`` columns of ``attention_mask``, or ``None`` when it is absent or all ones (no padding)."""
    if attention_mask is None:
        return None
    batch, time = shape
    matrix = isinstance(attention_mask, Tensor) and attention_mask.dim() == 2
    if not matrix or attention_mask.shape[0] != batch or attention_mask.shape[1] < time:
        got = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
        raise ValueError(
            f"{where}: `attention_mask` must have shape (batch, time) = ({batch}, {time}), or ({batch}, cache "
            f"length + {time}), got {got}"
        )
    mask = attention_mask[:, -time:]
    return None if bool(mask.all()) else mask
