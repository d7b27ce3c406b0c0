import pytest
import torch

from blipq.contract.errors import ModelUnavailable
from blipq.inference.device import resolve_device, resolve_dtype


def test_auto_device_and_dtype_on_this_machine() -> None:
    device = resolve_device("auto")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert device.type == expected
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_missing_cuda_is_a_clear_error() -> None:
    with pytest.raises(ModelUnavailable, match="CUDA is not available"):
        resolve_device("cuda:1")


def test_nonsense_device_and_dtype() -> None:
    with pytest.raises(ModelUnavailable, match="unknown device 'gpu-please'"):
        resolve_device("gpu-please")
    with pytest.raises(ModelUnavailable, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", torch.device("cpu"))
