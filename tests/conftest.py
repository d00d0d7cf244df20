"""Shared test setup: use the offline MNIST copy beside the project, as the Makefile does; run the
model and engine tests over every registered model plus a test-only BatchNorm/dropout architecture.

`LIB_TEST_DEVICE` (default "cpu") is the device the engine tests train on; benchmarks/gpu_check.sh
sets it to "cuda" to run them on a GPU. There, float32 convolutions and matrix products are kept
in full float32 while tests run (torch lets cuDNN use TF32, 10-bit mantissas, by default): the
tolerances of tests/test_engine.py are reasoned for float32 rounding."""
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from lib import models

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # <repo>/../shared/data
TEST_DEVICE = os.environ.get("LIB_TEST_DEVICE", "cpu")  # where tests/test_engine.py trains


def pytest_configure(config):
    """A LIB_TEST_DEVICE that cannot be used stops the session at once, saying why."""
    from lib.engine import resolve_device

    try:
        resolve_device(TEST_DEVICE)
    except ValueError as error:
        raise pytest.UsageError(f"LIB_TEST_DEVICE={TEST_DEVICE!r}: {error}") from None


@pytest.fixture(scope="session", autouse=True)
def full_float32_on_cuda():
    """No TF32 in the tests' CUDA kernels (see the module docstring); nothing changes on the CPU."""
    if not torch.cuda.is_available():
        yield
        return
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.fixture(scope="session", autouse=True)
def mnist_data_dir():
    """Set PYTORCH_DATA_DIR to ../shared/data when it is unset and that copy exists, so a bare
    `pytest` works like `make test`; elsewhere lib.data finds or downloads MNIST itself."""
    unset = not os.environ.get("PYTORCH_DATA_DIR")
    if unset and (SHARED_DATA / "MNIST" / "raw").is_dir():
        os.environ["PYTORCH_DATA_DIR"] = str(SHARED_DATA)
        yield SHARED_DATA
        del os.environ["PYTORCH_DATA_DIR"]
    else:
        yield os.environ.get("PYTORCH_DATA_DIR")


# ----------------------------------------------------------------------------- models under test

BN_DROPOUT_MODEL = "TestOnlyBNDropoutNet"  # registered only while a test that asks for it runs


class BNDropoutNet(nn.Module):
    """Test-only architecture: the engine's BatchNorm1d/2d and Dropout/Dropout2d paths, before any
    registered model needs them. A shared branch (conv, batch norm, ReLU, max-pool, channel dropout)
    via `both_digits`, then a head with batch norm and dropout; answers like every model. The layers
    before a batch norm have no bias: the norm cancels it, its gradient would be float noise only."""

    report, weight_sharing, auxiliary, published = None, True, True, None  # the registry's metadata

    def __init__(self, p=0.25):
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(1, 8, 3, bias=False),  # (N, 8, 12, 12)
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 8, 6, 6)
            nn.Dropout2d(p),
            nn.Flatten(),  # (N, 288)
            nn.Linear(8 * 6 * 6, 10),  # (N, 10)
        )
        self.head = nn.Sequential(nn.Linear(20, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(p),
                                  nn.Linear(16, 2))

    def forward(self, x):  # x: (N, 2, 14, 14)
        digits = models.both_digits(self.branch, x)  # (N, 2, 10)
        return self.head(digits.flatten(1)), digits  # (N, 2), (N, 2, 10)


@pytest.fixture
def bn_dropout_model(monkeypatch):
    """Register BNDropoutNet for the duration of one test; returns its name. monkeypatch removes it
    afterwards, so `list_models()` never depends on which tests ran before."""
    assert BN_DROPOUT_MODEL not in models.list_models()
    monkeypatch.setitem(models._REGISTRY, BN_DROPOUT_MODEL, BNDropoutNet)
    return BN_DROPOUT_MODEL


def pytest_generate_tests(metafunc):
    """A test that takes `model_name` runs once per registered model (read at collection time, so
    models registered later are covered) and once on the test-only BNDropoutNet, unless it
    parametrizes `model_name` itself."""
    if "model_name" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if "model_name" in ([n.strip() for n in names.split(",")] if isinstance(names, str) else names):
            return
    metafunc.parametrize("model_name", models.list_models() + [BN_DROPOUT_MODEL], indirect=True)


@pytest.fixture
def model_name(request):
    if request.param == BN_DROPOUT_MODEL:
        return request.getfixturevalue("bn_dropout_model")
    return request.param


@pytest.fixture
def pair_batch():
    """A reproducible batch of 16 random pairs: input (16, 2, 14, 14), target (16,), classes (16, 2)."""
    g = torch.Generator().manual_seed(0)
    classes = torch.randint(10, (16, 2), generator=g)  # (16, 2)
    return torch.randn(16, 2, 14, 14, generator=g), (classes[:, 0] <= classes[:, 1]).long(), classes


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread while a module runs (`pytestmark = pytest.mark.usefixtures("single_thread")`).
    The tensors of the model and engine tests are tiny; on a shared 2-core machine two OpenMP
    threads spin waiting for each other (measured under load: 4 min 48 s with two, 24 s with one)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- the quick study

@pytest.fixture(scope="session")
def quick_study(tmp_path_factory):
    """The whole quick study (grid + evaluation), trained once per test session in a temporary
    results folder; tests add their own files to it (seed_models.json, best.json) but never change
    what is there. Returns (results folder, grid, evaluation)."""
    from lib import experiments

    results = tmp_path_factory.mktemp("quick_results")
    grid, evaluation = experiments.run_study("quick", results_dir=results, progress=False, workers=1)
    return results, grid, evaluation
