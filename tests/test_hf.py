"""rnnzoo.hf: Hugging Face models around SequenceModel (save/load, generate with the recurrent state as its cache,
loss), and ``rnnzoo hf export`` / ``rnnzoo hf import`` between runs and Hugging Face directories."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.utils import logging as hf_logging

import rnnzoo
from rnnzoo.cli import main
from rnnzoo.hf import RnnzooCache, RnnzooConfig, RnnzooForCausalLM
from rnnzoo.models import SequenceModel
from rnnzoo.train import TrainConfig, checkpoints, load_checkpoint, train
from rnnzoo.train.evaluate import load_run

hf_logging.disable_progress_bar()
MIXERS = [m.name for m in rnnzoo.list_models()]
VOCAB = 50


def tiny(mixer: str = "gla", seed: int = 0, **kwargs) -> RnnzooForCausalLM:
    torch.manual_seed(seed)
    settings = {"vocab_size": VOCAB, "d_model": 32, "n_layers": 2, **kwargs}
    return RnnzooForCausalLM(RnnzooConfig(mixer=mixer, **settings)).eval()


def record_forward_lengths(model: RnnzooForCausalLM) -> list[int]:
    """The length of input_ids at each forward of ``model`` from now on."""
    lengths, forward = [], model.forward

    def recording(*args, **kwargs):
        lengths.append((args[0] if args else kwargs["input_ids"]).shape[1])
        return forward(*args, **kwargs)

    model.forward = recording
    return lengths


def states_equal(a: list, b: list) -> bool:
    return all(all(torch.equal(x, y) for x, y in zip(s.tensors().values(), t.tensors().values())) for s, t in zip(a, b))


def test_import_rnnzoo_does_not_import_transformers():
    code = "import sys, rnnzoo, rnnzoo.models, rnnzoo.train, rnnzoo.cli; print('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("mixer", MIXERS)
def test_greedy_generate_matches_sequence_model_one_step_per_token(mixer):
    model = tiny(mixer)
    prompt = torch.randint(VOCAB, (2, 5), generator=torch.Generator().manual_seed(1))
    steps, step = [], model.model.step
    model.model.step = lambda *a, **k: steps.append(1) or step(*a, **k)
    lengths = record_forward_lengths(model)
    out = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert lengths == [5, 1, 1, 1, 1, 1] and len(steps) == 5  # the prompt, then one step per new token
    assert torch.equal(out, model.model.generate(prompt, 6, temperature=0))


def test_save_and_load_round_trip_bit_exactly(tmp_path):
    models = [tiny("gla"), tiny("hgrn"), tiny("mamba", mixer_kwargs={"negative_eigenvalues": True}),
              tiny("hawk,hawk,attention", mixer_kwargs={"attention": {"window": 8}}, n_layers=3)]  # fmt: skip
    tokens = torch.randint(VOCAB, (2, 12))
    for i, model in enumerate(models):
        model.save_pretrained(tmp_path / str(i))
        assert (tmp_path / str(i) / "model.safetensors").is_file()
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / str(i))
        assert isinstance(loaded, RnnzooForCausalLM) and loaded.config.model_kwargs() == model.config.model_kwargs()
        ours, theirs = model.state_dict(), loaded.state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
        assert torch.equal(model(tokens).logits, loaded(tokens).logits)


def test_parameter_names_are_the_sequence_models():
    model = tiny("hawk,attention")
    assert [f"model.{k}" for k in model.model.state_dict()] == list(model.state_dict())


def test_labels_give_the_shifted_causal_lm_loss():
    model = tiny("mamba")
    tokens = torch.randint(VOCAB, (2, 9))
    labels = tokens.clone()
    labels[0, :3] = -100
    out = model(tokens, labels=labels)
    assert torch.allclose(out.loss, ForCausalLMLoss(out.logits, labels, VOCAB))
    out.loss.backward()
    assert model.model.embedding.weight.grad is not None
    _, logits, cache = model(tokens, labels=labels, return_dict=False)
    assert torch.equal(logits, out.logits) and isinstance(cache, RnnzooCache) and cache.length == 9


def test_the_cache_continues_a_sequence_and_is_left_as_it_was():
    model = tiny("gated_deltanet")
    tokens = torch.randint(VOCAB, (2, 11))
    with torch.no_grad():
        whole = model(tokens).logits
        first = model(tokens[:, :6])
        kept = [s.detach() for s in first.cache.states]
        rest = model(tokens[:, 6:], cache=first.cache)
        again = model(tokens[:, 6:], cache=first.cache)
    assert torch.allclose(torch.cat([first.logits, rest.logits], 1), whole, atol=1e-5)
    assert torch.equal(rest.logits, again.logits) and states_equal(first.cache.states, kept)
    assert rest.cache.length == 11 and first.cache.length == 6


def test_generate_continues_from_a_given_cache():
    model = tiny("hawk")
    prompt = torch.randint(VOCAB, (1, 7))
    with torch.no_grad():
        cache = model(prompt[:, :4]).cache
    lengths = record_forward_lengths(model)
    out = model.generate(prompt, cache=cache, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, model.model.generate(prompt, 4, temperature=0))
    assert lengths == [3, 1, 1, 1]  # only the tokens the cache has not seen


def test_beam_search_reorders_the_state_like_recomputing_without_cache():
    model = tiny("mamba2")
    prompt = torch.randint(VOCAB, (2, 5))
    with_cache = model.generate(prompt, max_new_tokens=5, num_beams=3, do_sample=False)
    without = model.generate(prompt, max_new_tokens=5, num_beams=3, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without)


def test_an_all_ones_attention_mask_is_no_padding():
    model = tiny("gla")
    prompt = torch.randint(VOCAB, (2, 5))
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False)
    assert torch.equal(out, model.model.generate(prompt, 4, temperature=0))


def test_bad_arguments_are_named():
    model = tiny("gla")
    tokens = torch.randint(VOCAB, (2, 5))
    with pytest.raises(ValueError, match="`labels` must have the shape"):
        model(tokens, labels=tokens[:, :3])
    with pytest.raises(ValueError, match="`attention_mask` must have shape"):
        model(tokens, attention_mask=torch.ones(2, 3))
    with pytest.raises(TypeError, match="`cache` must be an RnnzooCache"):
        model(tokens, cache=[])
    with pytest.raises(TypeError, match="unsupported argument.*inputs_embeds"):
        model(tokens, inputs_embeds=torch.randn(2, 5, 32))
    with pytest.raises(ValueError, match="`mixer`"):
        RnnzooForCausalLM(RnnzooConfig(mixer="nope"))


def test_padding_reaches_sequence_model_forward_then_steps_run_without_it():
    model = tiny("gla")
    masks, forward = [], model.model.forward

    def recording(tokens, state=None, **kwargs):
        masks.append(kwargs.pop("attention_mask", None))
        return forward(tokens, state, **kwargs)

    model.model.forward = recording
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    lengths = record_forward_lengths(model)
    model.generate(torch.randint(VOCAB, (2, 5)), attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert lengths == [5, 1, 1] and len(masks) == 1 and torch.equal(masks[0], mask)
    with torch.no_grad():
        cache = model(torch.randint(VOCAB, (2, 5))).cache
        model(torch.randint(VOCAB, (2, 2)), cache=cache, attention_mask=torch.cat([mask, mask[:, :2]], 1))
    assert torch.equal(masks[-1], mask[:, :2])  # the last `time` columns of a (batch, cache + time) mask


@pytest.mark.skipif(
    "attention_mask" not in inspect.signature(SequenceModel.forward).parameters,
    reason="SequenceModel.forward takes no attention_mask yet (padding support lands with it)",
)
@pytest.mark.parametrize("mixer", ["gla", "mamba", "attention", "hawk,attention"])
def test_left_padded_batch_generation_matches_each_prompt_alone(mixer):
    model = tiny(mixer)
    prompts = [torch.randint(1, VOCAB, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 3, 1)]
    batch = torch.zeros(3, 5, dtype=torch.long)
    mask = torch.zeros(3, 5, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        batch[row, 5 - len(prompt) :] = prompt
        mask[row, 5 - len(prompt) :] = 1
    out = model.generate(batch, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    for row, prompt in enumerate(prompts):
        assert torch.equal(out[row, 5:], model.model.generate(prompt[None], 4, temperature=0)[0, len(prompt) :])


# -- rnnzoo hf export / import -----------------------------------------------------------------------------------


@pytest.fixture
def text(tmp_path, monkeypatch):
    """A small text corpus and a private token cache."""
    monkeypatch.setenv("RNNZOO_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"def f{i}(x):\n    return x * {i} + {i % 7}  # é\n" for i in range(400)))
    return path


def tiny_run(text, out, **changes) -> None:
    fields = {"data": str(text), "params": 20_000, "n_layers": 2, "context": 16, "batch_size": 2, "steps": 2,
              "warmup": 1, "eval_every": 2, "eval_batches": 1, "checkpoint_every": 2, "threads": 1}  # fmt: skip
    train(TrainConfig(**{**fields, **changes}), out)


@pytest.mark.parametrize("mixer", ["gla", "hawk,attention"])
def test_run_to_hf_and_back_is_bit_identical(text, tmp_path, capsys, mixer):
    tiny_run(text, tmp_path / "run", mixer=mixer)
    assert main(["hf", "export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert main(["hf", "import", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    run, hf, back = (
        load_run(tmp_path / "run"),
        AutoModelForCausalLM.from_pretrained(tmp_path / "hf"),
        load_run(tmp_path / "back"),
    )
    tokens = torch.randint(256, (2, 20))
    with torch.no_grad():
        assert torch.equal(hf(tokens).logits, run.model(tokens)[0])
        assert torch.equal(back.model(tokens)[0], run.model(tokens)[0])
    original, imported = (
        load_checkpoint(checkpoints(tmp_path / "run")[-1]),
        load_checkpoint(checkpoints(tmp_path / "back")[-1]),
    )
    assert original[0].keys() == imported[0].keys() and all(
        torch.equal(original[0][k], imported[0][k]) for k in original[0]
    )
    assert imported[2] == original[2] and imported[3] == original[3] and back.step == run.step == 2
    assert json.loads((tmp_path / "hf" / "rnnzoo_tokenizer.json").read_text()) == {"kind": "byte"}
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(tmp_path / "back"), "--prompt", "def", "--max-new-tokens", "3"]) == 0


def test_a_bpe_runs_tokenizer_loads_with_auto_tokenizer(text, tmp_path):
    tiny_run(text, tmp_path / "run", tokenizer="bpe:300")
    assert main(["hf", "export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    ours, theirs = load_run(tmp_path / "run").tokenizer, AutoTokenizer.from_pretrained(tmp_path / "hf")
    sample = "def f12(x):\n    return x * 3  # é"
    assert theirs(sample)["input_ids"] == ours.encode(sample).tolist()
    assert theirs.decode(ours.encode(sample).tolist()) == sample


def test_a_model_made_in_python_imports_as_a_run(tmp_path):
    tiny("mamba").save_pretrained(tmp_path / "hf")
    assert main(["hf", "import", str(tmp_path / "hf"), str(tmp_path / "run")]) == 0
    run = load_run(tmp_path / "run")
    assert run.config.mixer == "mamba" and run.config.d_model == 32 and run.tokenizer.name == f"ids:{VOCAB}"


def test_resuming_an_imported_run_is_a_one_line_error(text, tmp_path, capsys):
    tiny_run(text, tmp_path / "run", mixer="gla")
    assert main(["hf", "export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert main(["hf", "import", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", "--out", str(tmp_path / "back")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "holds weights only" in err and "Traceback" not in err, err


def test_hf_command_errors_are_one_line_and_exit_2(text, tmp_path, capsys):
    tiny("gla", mlp="gelu").save_pretrained(tmp_path / "gelu")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("")
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
    cases = {
        ("export", tmp_path / "nothing", tmp_path / "out"): "RUN_OR_CHECKPOINT",
        ("export", tmp_path / "nothing", tmp_path / "taken"): "OUT_DIR",
        ("import", tmp_path / "nothing", tmp_path / "out"): "no config.json",
        ("import", tmp_path / "llama", tmp_path / "out"): "model_type 'llama' is not an rnnzoo model",
        ("import", tmp_path / "gelu", tmp_path / "out"): "mlp='gelu' (rnnzoo train: 'swiglu')",
    }
    for (command, source, out), message in cases.items():
        with pytest.raises(SystemExit) as exc:
            main(["hf", command, str(source), str(out)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 2, err  # usage, error
    assert not (tmp_path / "out").exists()
