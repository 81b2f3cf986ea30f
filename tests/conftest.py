import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    import torch

    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none here")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture
def tmp_results(tmp_path, monkeypatch):
    """A throw-away results store."""
    path = tmp_path / "results"
    monkeypatch.setenv("BNREPRO_RESULTS", str(path))
    return path


@pytest.fixture
def one_thread():
    """Run the test on one CPU thread (see bnrepro.core.device.cpu_threads)."""
    from bnrepro.core.device import cpu_threads

    with cpu_threads():
        yield


def have_fashion_mnist() -> bool:
    if (DEBIAN_FMNIST / "train-images-idx3-ubyte.gz").exists():
        return True
    data = os.environ.get("BNREPRO_DATA")
    return bool(data) and any(Path(data).glob("**/train-images-idx3-ubyte*"))


needs_fashion_mnist = pytest.mark.skipif(not have_fashion_mnist(),
                                         reason="Fashion-MNIST files absent (run `make data`)")
