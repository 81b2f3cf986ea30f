"""Tests for bnrepro.core.device: precedence, validation and the helpers used for timing."""

import pytest
import torch

from bnrepro.core.device import cpu_threads, describe_device, get_device, synchronize


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("BNREPRO_DEVICE", raising=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA, so the default is not cpu")
def test_default_is_cpu_without_accelerators():
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS, so the default is not cpu")
    assert get_device() == torch.device("cpu")


def test_argument_accepts_str_and_device():
    assert get_device("cpu") == torch.device("cpu")
    assert get_device(" CPU ") == torch.device("cpu")
    assert get_device(torch.device("cpu")) == torch.device("cpu")


def test_env_var_used_when_no_argument(monkeypatch):
    monkeypatch.setenv("BNREPRO_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")


def test_argument_wins_over_env(monkeypatch):
    monkeypatch.setenv("BNREPRO_DEVICE", "no-such-device")  # would raise if it were consulted
    assert get_device("cpu") == torch.device("cpu")


def test_empty_env_and_auto_mean_autodetect(monkeypatch):
    monkeypatch.setenv("BNREPRO_DEVICE", "")
    assert get_device() == get_device("auto")


def test_bad_argument_names_value_and_origin():
    with pytest.raises(ValueError, match="'gpu0'.*device argument.*Available on this machine: cpu"):
        get_device("gpu0")


def test_bad_env_names_value_and_origin(monkeypatch):
    monkeypatch.setenv("BNREPRO_DEVICE", "tpu")
    with pytest.raises(ValueError, match="'tpu'.*BNREPRO_DEVICE"):
        get_device()


def test_wrong_type_rejected():
    with pytest.raises(ValueError, match="expected a str or torch.device"):
        get_device(0)


def test_unsupported_type_rejected():
    with pytest.raises(ValueError, match="unsupported device type 'meta'"):
        get_device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here, so 'cuda' is valid")
def test_unavailable_cuda_is_an_error(monkeypatch):
    with pytest.raises(ValueError, match="'cuda'.*not available"):
        get_device("cuda")
    monkeypatch.setenv("BNREPRO_DEVICE", "cuda:0")
    with pytest.raises(ValueError, match="'cuda:0'.*BNREPRO_DEVICE"):
        get_device()


def test_describe_and_synchronize_cpu():
    text = describe_device("cpu")
    n = torch.get_num_threads()
    assert text == f"cpu ({n} thread{'' if n == 1 else 's'})"
    with cpu_threads():
        assert describe_device("cpu") == "cpu (1 thread)"  # never "1 threads"
    assert synchronize(torch.device("cpu")) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_describe_cuda():
    assert describe_device("cuda").startswith("cuda:")
    synchronize("cuda")
