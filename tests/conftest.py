import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# The tests run small tensors, where intra-op threads cost more than they save (and on a busy machine far more:
# a float64 nn.GRU step measured 2.2 s at 2 threads vs 7 ms at 1). One thread per process; pytest-xdist, when
# installed, runs one process per core instead (`make test` does).
torch.set_num_threads(1)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """A small text corpus of 120 files (for ``rnnzoo train``) and a private token cache, which processes
    started by the test inherit."""
    monkeypatch.setenv("RNNZOO_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(120):
        (root / f"f{i:03d}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}\n" for j in range(8)))
    return root
