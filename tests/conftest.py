"""Test set-up: without a CUDA device the Triton kernels run under the interpreter on CPU tensors.

TRITON_INTERPRET must be set before triton is first imported, hence at conftest import time.
"""
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"

# Under pytest-xdist every worker would otherwise run torch's CPU ops (references, the interpreter's
# tensors) on all cores: N workers x all cores threads oversubscribe the machine. Share the cores.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # fresh random inputs per test, but reproducible from the printed seed on failure
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield


def clean_env():
    """Environment for subprocesses that must compile real cubins (no interpreter)."""
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def assert_bytes_equal(got: torch.Tensor, want: torch.Tensor, what: str):
    got, want = got.cpu(), want.cpu()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    bad = (got.view(torch.uint8) != want.view(torch.uint8))
    if bad.any():
        idx = bad.nonzero()[:8].tolist()
        detail = ", ".join(f"{tuple(i)}: got {got.view(torch.uint8)[tuple(i)].item():#04x} "
                           f"want {want.view(torch.uint8)[tuple(i)].item():#04x}" for i in idx)
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} bytes differ; first: {detail}")
