"""Device placement of a Ray trial: CPU unless Ray assigned a GPU; fractional GPUs are capped."""

import pytest
import torch

from nlsweep.execution.trainable import trial_device
from nlsweep.spec import load_spec
from tests.helpers import GOOD_SPEC, spec_text


@pytest.fixture
def spec(write_spec):
    return load_spec(write_spec(GOOD_SPEC), available={"CPU": 2.0, "GPU": 1.0})


def test_cpu_when_ray_assigned_no_gpu(spec):
    assert trial_device(spec, "auto", []) == torch.device("cpu")
    assert trial_device(spec, "cpu", [0]) == torch.device("cpu")


def test_cuda_requested_without_a_gpu_raises(spec):
    with pytest.raises(RuntimeError, match="assigned this trial no GPU"):
        trial_device(spec, "cuda", [])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_assigned_gpu_without_cuda_raises(spec):
    with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
        trial_device(spec, "auto", [0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fractional_gpu_caps_memory(write_spec):
    text = spec_text({"resources/gpu": 0.25})
    spec = load_spec(write_spec(text), available={"CPU": 2.0, "GPU": 1.0})
    assert trial_device(spec, "auto", [0]) == torch.device("cuda", 0)
    assert torch.cuda.get_per_process_memory_fraction(0) == pytest.approx(0.25)
