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
