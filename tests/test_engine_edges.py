"""Engine edge cases and refusal of bad checkpoints."""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.asr.checkpoint import CheckpointError, load_checkpoint
from pipeline.asr.engine import Engine, SegmentTooLong, resolve_precision
from tests.test_engine_conformance import GOLDEN, engine, read_wav



@pytest.mark.parametrize("model", ["v3_ctc", "v3_e2e_rnnt"])
def test_empty_and_subframe_inputs_give_empty_text(model: str) -> None:
    eng = engine(model)
    res = eng.transcribe([np.zeros(0, dtype=np.float32), np.zeros(100, dtype=np.float32), np.zeros(319, np.float32)])
    assert [r.text for r in res] == ["", "", ""]
    assert all(r.token_ids == [] and r.words == [] for r in res)


def test_one_window_input_runs() -> None:
    res = engine("v3_ctc").transcribe([np.zeros(320, dtype=np.float32)])
    assert isinstance(res[0].text, str)


def test_thirty_second_segment_works_and_longer_is_refused() -> None:
    eng = engine("v3_e2e_rnnt")
    speech = read_wav("04_speech_23s")
    thirty = np.concatenate([speech, speech])[: 30 * 16000]
    (res,) = eng.transcribe([thirty])
    assert res.text and res.words
    assert res.words[-1].end <= 30.0 + 1e-6
    with pytest.raises(SegmentTooLong, match="exceeds the engine limit of 30 s"):
        eng.transcribe([np.zeros(30 * 16000 + 1, dtype=np.float32)])


def test_int16_input_equals_float_input() -> None:
    eng = engine("v3_ctc")
    speech = read_wav("02_speech_5s")
    as_int = (speech * 32768).astype(np.int16)
    assert eng.transcribe([as_int])[0].token_ids == eng.transcribe([speech])[0].token_ids


def test_mixed_lengths_batch_equals_single_runs() -> None:
    eng = engine("v3_rnnt")
    speech = read_wav("03_speech_9s")
    items = [speech[: n * 1600] for n in (3, 57, 1, 12, 94, 30)] + [np.zeros(50, np.float32)]
    singles = [eng.transcribe([w])[0] for w in items]
    batch = eng.transcribe(items)
    assert [b.token_ids for b in batch] == [s.token_ids for s in singles]
    assert [b.token_frames for b in batch] == [s.token_frames for s in singles]
    assert [b.words for b in batch] == [s.words for s in singles]


def test_non_mono_input_is_refused() -> None:
    with pytest.raises(ValueError, match="1-D mono"):
        engine("v3_ctc").transcribe([np.zeros((2, 16000), dtype=np.float32)])


def test_precision_rules() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp8", cpu)


# -- bad checkpoints --------------------------------------------------------------------------


def test_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    data = (GOLDEN / "models" / "v3_ctc.ckpt").read_bytes()
    bad = tmp_path / "v3_ctc.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|cannot read"):
        load_checkpoint(bad)


def test_random_bytes_and_missing_file_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.ckpt")


class _Exploit:
    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (os.mkdir, (str(_Exploit.target),))


def test_pickle_with_foreign_global_is_refused_without_running_it(tmp_path: Path) -> None:
    _Exploit.target = tmp_path / "pwned"
    bad = tmp_path / "evil.ckpt"
    torch.save({"cfg": _Exploit(), "state_dict": OrderedDict()}, bad)
    with pytest.raises(CheckpointError, match="refused: the pickle references a type outside the allowlist"):
        load_checkpoint(bad)
    assert not _Exploit.target.exists()


def test_wrong_structure_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "list.ckpt"
    torch.save([1, 2, 3], p)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(p)
    p2 = tmp_path / "nocfg.ckpt"
    torch.save({"state_dict": OrderedDict()}, p2)
    with pytest.raises(CheckpointError, match="missing cfg"):
        load_checkpoint(p2)


def test_mismatched_weights_are_refused(tmp_path: Path) -> None:
    ckpt = torch.load(GOLDEN / "models" / "v3_ctc.ckpt", weights_only=False)
    ckpt["state_dict"].pop("head.decoder_layers.0.bias")
    p = tmp_path / "v3_ctc.ckpt"
    torch.save(ckpt, p)
    with pytest.raises(CheckpointError, match="weights do not match"):
        Engine.from_checkpoint(p, device="cpu")


def test_missing_tokenizer_is_reported(tmp_path: Path) -> None:
    shutil.copy(GOLDEN / "models" / "v3_e2e_ctc.ckpt", tmp_path / "v3_e2e_ctc.ckpt")
    with pytest.raises(CheckpointError, match="tokenizer not found beside the checkpoint"):
        Engine.from_checkpoint(tmp_path / "v3_e2e_ctc.ckpt", device="cpu")
    shutil.copy(GOLDEN / "models" / "v3_e2e_ctc_tokenizer.model", tmp_path / "v3_e2e_ctc_tokenizer.model")
    assert Engine.from_checkpoint(tmp_path / "v3_e2e_ctc.ckpt", device="cpu").tokenizer.size == 256


def test_tokenizer_size_must_match_head(tmp_path: Path) -> None:
    shutil.copy(GOLDEN / "models" / "v3_e2e_ctc.ckpt", tmp_path / "v3_e2e_ctc.ckpt")
    shutil.copy(GOLDEN / "models" / "v3_e2e_rnnt_tokenizer.model", tmp_path / "v3_e2e_ctc_tokenizer.model")
    with pytest.raises(CheckpointError, match="tokenizer has 1024 tokens but the head has 257"):
        Engine.from_checkpoint(tmp_path / "v3_e2e_ctc.ckpt", device="cpu")


def test_rnnt_with_a_two_layer_prediction_network_matches_the_reference_loop() -> None:
    """No official model has two LSTM layers, but the config allows it: the batched decoder must agree."""
    import copy

    from pipeline.asr.model import random_model
    from pipeline.asr.tokenizer import CharTokenizer
    from tests.test_engine_conformance import expected, reference_rnnt_trace

    cfg = copy.deepcopy(expected("v3_rnnt")["cfg"])
    cfg["head"]["decoder"]["pred_rnn_layers"] = 2
    model = random_model(cfg, seed=3)
    with torch.no_grad():
        model.head.joint.joint_net[1].bias[model.blank_id] -= 1.0  # emit a few tokens
    eng = Engine(model, CharTokenizer(cfg["decoding"]["vocabulary"]), device="cpu")
    waves = [read_wav("02_speech_5s"), read_wav("01_speech_2s")]
    batch = eng.transcribe(waves)
    for w, res in zip(waves, batch):
        encoded, elen, _ = eng.forward([torch.from_numpy(w)])
        ref = reference_rnnt_trace(eng, encoded, int(elen[0]))
        assert res.token_ids == ref["ids"] and res.token_frames == ref["frames"]
    assert any(r.token_ids for r in batch)
