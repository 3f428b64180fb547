"""Opt-in CPU precisions: they are really applied, stay close to fp32, and mostly agree on decisions.

The tiny goldens have decision margins of ~5e-4, far below bf16/int8 resolution, so the agreement
floors here are loose; `python -m bench.precision` prints the measured figures.
"""

from __future__ import annotations

import pytest
import torch

from bench.precision import agreement, edit_distance
from pipeline.asr.engine import Engine
from tests.test_engine_conformance import FILES, GOLDEN, read_wav



def test_edit_distance() -> None:
    assert edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([], [4, 5]) == 2


@pytest.mark.parametrize("model", ["v3_ctc", "v3_e2e_ctc", "v3_e2e_rnnt"])
@pytest.mark.parametrize("precision,floor", [("bf16", 0.9), ("int8", 0.85)])
def test_precision_agreement_with_fp32(model: str, precision: str, floor: float) -> None:
    a = agreement(model, precision, [read_wav(f) for f in FILES], GOLDEN / "models")
    assert a.encoder_max_abs < 0.25
    if "ctc" in model:  # RNN-T tiny models run at the 10-symbol cap: one flip cascades
        assert a.tokens >= floor, a


def test_precision_modes_change_the_encoder() -> None:
    path = GOLDEN / "models" / "v3_ctc.ckpt"
    bf16 = Engine.from_checkpoint(path, device="cpu", precision="bf16")
    assert bf16.model.encoder.layers[0].feed_forward1.linear1.weight.dtype == torch.bfloat16
    assert bf16.model.head.decoder_layers[0].weight.dtype == torch.float32  # heads stay fp32
    int8 = Engine.from_checkpoint(path, device="cpu", precision="int8")
    assert "Quantized" in type(int8.model.encoder.layers[0].feed_forward1.linear1).__name__ or "quantized" in type(
        int8.model.encoder.layers[0].feed_forward1.linear1
    ).__module__
    text = int8.transcribe([read_wav("02_speech_5s")])[0].text
    assert isinstance(text, str) and text
