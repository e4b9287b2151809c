"""The Hugging Face configuration of an rnnzoo causal LM: every :class:`~rnnzoo.models.SequenceModel` setting,
saved as ``config.json`` by ``save_pretrained``.

>>> config = RnnzooConfig(vocab_size=256, mixer="hawk,hawk,attention", d_model=64, n_layers=3,
...                       mixer_kwargs={"attention": {"window": 128}})
>>> config.model_kwargs()["mixer"]
'hawk,hawk,attention'
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import PretrainedConfig

from ..models import SequenceModel

__all__ = ["RnnzooConfig"]


class RnnzooConfig(PretrainedConfig):
    """A :class:`~rnnzoo.models.SequenceModel` causal LM's constructor arguments, under their own names:
    ``vocab_size``, ``mixer`` (a registered layer, or a comma-separated pattern such as
    ``"hawk,hawk,attention"``), ``d_model``, ``n_layers``, ``mixer_kwargs`` (for a pattern, a dict of keyword
    dicts keyed by layer name), ``mlp``, ``mlp_ratio`` and ``mlp_hidden``. They are checked when the model is
    built, by ``SequenceModel``, which names a bad one.

    ``rnnzoo_run`` records the ``rnnzoo train`` run a model was exported from (``{"config": its TrainConfig
    fields, "step": its step}``; ``None`` otherwise), so that ``rnnzoo hf import`` restores that run's
    configuration. ``hidden_size`` and ``num_hidden_layers`` read ``d_model`` and ``n_layers`` for tools that
    expect Hugging Face's names. Embedding and head are not tied (``tie_word_embeddings=False``), as in
    ``SequenceModel``.
    """

    model_type: ClassVar[str] = "rnnzoo"
    attribute_map: ClassVar[dict[str, str]] = {"hidden_size": "d_model", "num_hidden_layers": "n_layers"}
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["cache"]  # Trainer's evaluation: logits only

    def __init__(
        self,
        vocab_size: int = 256,
        mixer: str = "gla",
        d_model: int = 64,
        n_layers: int = 2,
        mixer_kwargs: dict | None = None,
        mlp: str = "swiglu",
        mlp_ratio: float = 4.0,
        mlp_hidden: int | None = None,
        use_cache: bool = True,
        rnnzoo_run: dict | None = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.mixer = mixer
        self.d_model = d_model
        self.n_layers = n_layers
        self.mixer_kwargs = dict(mixer_kwargs or {})
        self.mlp = mlp
        self.mlp_ratio = mlp_ratio
        self.mlp_hidden = mlp_hidden
        self.use_cache = use_cache
        self.rnnzoo_run = rnnzoo_run
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    def model_kwargs(self) -> dict[str, Any]:
        """The keywords of ``SequenceModel(**config.model_kwargs())``."""
        names = ("vocab_size", "mixer", "d_model", "n_layers", "mixer_kwargs", "mlp", "mlp_ratio", "mlp_hidden")
        return {name: getattr(self, name) for name in names}

    @classmethod
    def from_model(cls, model: SequenceModel, **kwargs: Any) -> RnnzooConfig:
        """The configuration that rebuilds ``model`` exactly (a causal LM): its MLP width is stored as
        ``mlp_hidden``, whatever ratio or budget chose it. ``kwargs`` set further fields (``rnnzoo_run``)."""
        if model.num_classes != model.vocab_size:
            raise ValueError(
                f"RnnzooConfig.from_model: `model` must be a causal LM (num_classes == vocab_size), got "
                f"num_classes={model.num_classes}, vocab_size={model.vocab_size}"
            )
        mlp = model.blocks[0].mlp
        return cls(vocab_size=model.vocab_size, mixer=model.mixer_name, d_model=model.d_model,
                   n_layers=model.n_layers, mixer_kwargs=model.mixer_kwargs, mlp="none" if mlp is None else mlp.kind,
                   mlp_hidden=None if mlp is None else mlp.d_hidden, **kwargs)  # fmt: skip
