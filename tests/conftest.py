"""Shared test setup: use the offline MNIST copy beside the project, as the Makefile does."""
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # <repo>/../shared/data


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
