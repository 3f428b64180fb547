"""Device and thread settings: every bad GIGAAM_DEVICE is a ValueError (which the CLI and the infer
service report as a configuration mistake), `auto` works on any host, and fp16 on CUDA still gives
the golden decisions."""

from __future__ import annotations

import os

import pytest
import torch

from bench.precision import edit_distance
from pipeline.asr.engine import Engine, configure_cpu_threads, resolve_device
from tests.test_engine_conformance import GOLDEN, expected, wavs

CUDA = torch.cuda.is_available()


def test_cpu_is_accepted() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("setting", ["auto", ""])
def test_auto_picks_cuda_only_when_present(setting: str) -> None:
    assert resolve_device(setting).type == ("cuda" if CUDA else "cpu")


@pytest.mark.skipif(CUDA, reason="needs a host without CUDA")
@pytest.mark.parametrize("setting", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_refused(setting: str) -> None:
    with pytest.raises(ValueError, match=f"device '{setting}' requested but CUDA is not available"):
        resolve_device(setting)


@pytest.mark.parametrize("setting", ["mps", "meta", "gpu7", "GPU", "CPU", "cuda:x", "cuda:", " cpu"])
def test_other_devices_are_refused_with_the_choices(setting: str) -> None:
    """`mps` and `meta` parse as torch devices, the rest do not: both must read the same."""
    with pytest.raises(ValueError, match="use auto, cpu, cuda or cuda:N") as err:
        resolve_device(setting)
    assert repr(setting) in str(err.value)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_index_beyond_the_visible_devices_is_refused() -> None:
    count = torch.cuda.device_count()
    assert resolve_device(f"cuda:{count - 1}") == torch.device("cuda", count - 1)
    with pytest.raises(ValueError, match=f"only {count} CUDA device"):
        resolve_device(f"cuda:{count}")


def test_cpu_threads_follow_the_setting_then_the_affinity() -> None:
    before = torch.get_num_threads()
    try:
        assert configure_cpu_threads(1) == 1 == torch.get_num_threads()
        assert configure_cpu_threads(-4) == 1  # nonsense never means zero threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        assert configure_cpu_threads(0) == cores == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def token_agreement(engine: Engine, model: str) -> float:
    """1 - pooled edit distance / golden tokens, over the golden inputs decoded one by one."""
    dist = total = 0
    for w, inp in zip(wavs(), expected(model)["inputs"]):
        want = inp["single"]["token_ids"]
        dist += edit_distance(engine.transcribe([w])[0].token_ids, want)
        total += max(1, len(want))
    return 1 - dist / total


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("model", ["v3_ctc", "v3_e2e_ctc"])  # RNN-T tiny models cascade on one flip
def test_cuda_fp16_agrees_with_the_goldens(model: str) -> None:
    """The tiny goldens' decision margins (~5e-4) sit near fp16 resolution: most, not all, tokens."""
    engine = Engine.from_checkpoint(GOLDEN / "models" / f"{model}.ckpt", device="cuda", precision="auto")
    assert engine.precision == "fp16" and engine.device.type == "cuda"
    assert next(engine.model.encoder.parameters()).dtype == torch.float16
    assert token_agreement(engine, model) >= 0.9
