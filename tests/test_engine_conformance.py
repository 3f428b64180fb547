"""Conformance against the reference goldens in tests/data/kit (tolerances from its GOLDEN_README.md)."""

from __future__ import annotations

import json
import wave
from functools import lru_cache

import numpy as np
import pytest
import torch

from pipeline.asr.checkpoint import load_checkpoint
from pipeline.asr.encoder import rotary_tables
from pipeline.asr.engine import Engine
from pipeline.asr.model import build_model
from pipeline.asr.tokenizer import SentencePieceTokenizer
from tests.kit import GOLDEN, STAGE_INPUTS

FILES = ["01_speech_2s", "02_speech_5s", "03_speech_9s", "04_speech_23s", "05_noise_1p5s", "06_silence_0p5s"]
MODELS = ["v3_ctc", "v3_rnnt", "v3_e2e_ctc", "v3_e2e_rnnt", "v2_ctc"]
CTC = [m for m in MODELS if "ctc" in m]
RNNT = [m for m in MODELS if "rnnt" in m]



def read_wav(name: str) -> np.ndarray:
    with wave.open(str(GOLDEN / "audio" / f"{name}.wav")) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0


@lru_cache(maxsize=None)
def wavs() -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(read_wav(f)) for f in FILES)


@lru_cache(maxsize=None)
def expected(model: str) -> dict:
    return json.loads((GOLDEN / "expected" / f"{model}.json").read_text())


@lru_cache(maxsize=None)
def arrays(name: str) -> dict[str, np.ndarray]:
    return dict(np.load(GOLDEN / "expected" / f"{name}.npz"))


@lru_cache(maxsize=None)
def engine(model: str) -> Engine:
    return Engine.from_checkpoint(GOLDEN / "models" / f"{model}.ckpt", device="cpu", precision="fp32")


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ws = wavs()
    lengths = torch.tensor([w.numel() for w in ws])
    batch = torch.zeros(len(ws), int(lengths.max()))
    for i, w in enumerate(ws):
        batch[i, : w.numel()] = w
    return batch, lengths


def assert_close(actual: torch.Tensor | np.ndarray, want: np.ndarray, atol: float) -> None:
    a = actual.detach().float().numpy() if isinstance(actual, torch.Tensor) else actual
    assert a.shape == want.shape
    diff = float(np.abs(a - want).max()) if a.size else 0.0
    assert diff <= atol, f"max abs diff {diff} > {atol}"


# -- features -------------------------------------------------------------------------------


@pytest.mark.parametrize("version,model", [("v3", "v3_ctc"), ("v2", "v2_ctc")])
def test_features_single(version: str, model: str) -> None:
    feats_golden = arrays(f"features_{version}")
    pre = engine(model).model.preprocessor
    for i, w in enumerate(wavs()):
        want = feats_golden[f"features_single_{i}"]
        with torch.inference_mode():
            feats, lens = pre(w[None], torch.tensor([w.numel()]))
        assert int(lens[0]) == expected(model)["inputs"][i]["feature_len"] == want.shape[1]
        diff = np.abs(feats[0].numpy() - want)
        assert diff.max() <= 2e-3 and np.percentile(diff, 99.9) <= 3e-4


def test_features_silence_floor() -> None:
    pre = engine("v3_ctc").model.preprocessor
    with torch.inference_mode():
        feats, _ = pre(wavs()[5][None], torch.tensor([wavs()[5].numel()]))
    assert torch.allclose(feats, torch.full_like(feats, -20.7232666), atol=1e-6)


def test_features_v2_batch_quirk() -> None:
    """v2 centre padding: the padded batch differs from solo runs for the noise input (Quirk Q2)."""
    golden = arrays("features_v2")
    batch, lengths = padded_batch()
    with torch.inference_mode():
        feats, lens = engine("v2_ctc").model.preprocessor(batch, lengths)
    for i in range(len(FILES)):
        want = golden[f"features_batch_valid_{i}"]
        assert_close(feats[i, :, : int(lens[i])], want, 2e-3)


@pytest.mark.parametrize("version,model", [("v2", "v2_ctc"), ("v3", "v3_ctc")])
def test_features_batch_lengths_and_v3_batch_frames(version: str, model: str) -> None:
    """Batch lengths are the reference's `feature_len_batch`; v3 (no centre padding) gives every
    item's valid frames exactly as a solo run does."""
    batch, lengths = padded_batch()
    with torch.inference_mode():
        feats, lens = engine(model).model.preprocessor(batch, lengths)
    inputs = expected(model)["inputs"]
    assert [int(n) for n in lens] == [item["feature_len_batch"] for item in inputs]
    if version == "v3":
        golden = arrays("features_v3")
        for i in range(len(FILES)):
            assert_close(feats[i, :, : int(lens[i])], golden[f"features_single_{i}"], 2e-3)


# -- encoder --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_encoder_single_stages(model: str) -> None:
    arr = arrays(model)
    m = engine(model).model
    for i, w in enumerate(wavs()):
        stages: list[torch.Tensor] = []
        with torch.inference_mode():
            feats, flen = m.preprocessor(w[None], torch.tensor([w.numel()]))
            encoded, elen = m.encoder(feats, flen, collect=stages)
        assert int(elen[0]) == expected(model)["inputs"][i]["encoded_len"]
        if i in STAGE_INPUTS:
            assert_close(stages[0][0], arr[f"subsampled_single_{i}"], 1e-4)
            assert_close(stages[1][0], arr[f"layer0_out_single_{i}"], 1e-4)
        assert_close(encoded[0], arr[f"encoded_single_{i}"], 2e-4)


@pytest.mark.parametrize("model", MODELS)
def test_encoder_batch(model: str) -> None:
    arr = arrays(model)
    m = engine(model).model
    batch, lengths = padded_batch()
    with torch.inference_mode():
        feats, flen = m.preprocessor(batch, lengths)
        encoded, elen = m.encoder(feats, flen)
    assert elen.tolist() == arr["encoded_len_batch"].tolist()
    assert torch.isfinite(encoded).all()
    for i, n in enumerate(elen.tolist()):
        assert_close(encoded[i, :, :n], arr["encoded_batch"][i, :, :n], 2e-4)


# -- heads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", CTC)
def test_ctc_log_probs(model: str) -> None:
    arr = arrays(model)
    eng = engine(model)
    for i, w in enumerate(wavs()):
        encoded, elen, _ = eng.forward([w])
        with torch.inference_mode():
            assert_close(eng.model.head(encoded)[0, : int(elen[0])], arr[f"logprobs_single_{i}"], 3e-4)
    batch = list(wavs())
    encoded, elen, _ = eng.forward(batch)
    with torch.inference_mode():
        lp = eng.model.head(encoded)
    for i, n in enumerate(elen.tolist()):
        assert_close(lp[i, :n], arr[f"logprobs_batch_{i}"], 3e-4)


def reference_rnnt_trace(eng: Engine, encoded: torch.Tensor, length: int) -> dict[str, list]:
    """The spec's per-utterance greedy loop (SPEC §9), written plainly, recording every joint call."""
    head = eng.model.head
    blank, cap = eng.model.blank_id, eng.model.max_symbols
    trace: dict[str, list] = {k: [] for k in ("frame", "argmax", "top1", "top2", "blank", "ids", "frames")}
    state = None
    last = None
    with torch.inference_mode():
        for t in range(length):
            enc_t = encoded[0, :, t]
            for _ in range(cap):
                if state is None:
                    g, new_state = head.decoder.initial(1, encoded.device)
                else:
                    g, new_state = head.decoder.step(torch.tensor([last]), state)
                logits = head.joint.logits(head.joint.enc(enc_t)[None], head.joint.pred(g))
                logp = torch.log_softmax(logits[0], dim=-1)
                top = torch.topk(logp, 2)
                k = int(logp.argmax())
                trace["frame"].append(t)
                trace["argmax"].append(k)
                trace["top1"].append(float(top.values[0]))
                trace["top2"].append(float(top.values[1]))
                trace["blank"].append(float(logp[blank]))
                if k == blank:
                    break
                trace["ids"].append(k)
                trace["frames"].append(t)
                last, state = k, new_state
    return trace


@pytest.mark.parametrize("model", RNNT)
def test_rnnt_trace_and_batched_decoding(model: str) -> None:
    arr = arrays(model)
    eng = engine(model)
    with torch.inference_mode():
        g, _ = eng.model.head.decoder.initial(1, torch.device("cpu"))
    assert_close(g[0], arr["rnnt_pred_initial_output"], 1e-5)
    for i, w in enumerate(wavs()):
        encoded, elen, hyps = eng.forward([w])
        trace = reference_rnnt_trace(eng, encoded, int(elen[0]))
        assert trace["frame"] == arr[f"rnnt_trace_single_{i}_frame"].tolist()
        assert trace["argmax"] == arr[f"rnnt_trace_single_{i}_argmax"].tolist()
        for key, golden_key in (("top1", "top1_logp"), ("top2", "top2_logp"), ("blank", "blank_logp")):
            assert_close(np.array(trace[key], dtype=np.float32), arr[f"rnnt_trace_single_{i}_{golden_key}"], 3e-4)
        # the vectorised decoder agrees with the plain loop and with the goldens
        assert hyps[0].token_ids == trace["ids"] == arr[f"rnnt_token_ids_single_{i}"].tolist()
        assert hyps[0].token_frames == trace["frames"] == arr[f"rnnt_token_frames_single_{i}"].tolist()


# -- decisions, text, words -----------------------------------------------------------------


def check_result(res, want: dict) -> None:  # noqa: ANN001
    assert res.token_ids == want["token_ids"]
    assert res.token_frames == want["token_frames"]
    assert res.text == want["text"]
    got = [(w.word, w.start, w.end) for w in res.words]
    assert [w[0] for w in got] == [w[0] for w in want["words"]]
    for (_, s, e), (_, ws, we) in zip(got, want["words"]):
        assert abs(s - ws) <= 1e-9 and abs(e - we) <= 1e-9


@pytest.mark.parametrize("model", MODELS)
def test_decisions_single_and_batch(model: str) -> None:
    exp = expected(model)
    eng = engine(model)
    singles = [eng.transcribe([w])[0] for w in wavs()]
    batch = eng.transcribe(list(wavs()))
    for i, inp in enumerate(exp["inputs"]):
        check_result(singles[i], inp["single"])
        check_result(batch[i], inp["batch"])
        assert abs(singles[i].token_times[0] - inp["single"]["token_frames"][0] * inp["frame_shift_s"]) < 1e-9


def test_batching_order_and_chunks_do_not_change_decisions() -> None:
    """Batches built from other orders and sizes still equal the solo goldens (v3)."""
    exp = expected("v3_e2e_rnnt")
    eng = Engine.from_checkpoint(GOLDEN / "models" / "v3_e2e_rnnt.ckpt", device="cpu", max_batch=4)
    order = [3, 0, 5, 2, 4, 1]
    res = eng.transcribe([wavs()[i] for i in order])
    for pos, i in enumerate(order):
        check_result(res[pos], exp["inputs"][i]["single"])


# -- tokenizer and rotary tables --------------------------------------------------------------


def test_rotary_tables_match_upstream() -> None:
    rope = arrays("rope_samples")
    pos = rope["positions"]
    for dk in (24, 48):
        cos, sin = rotary_tables(dk, 5000, 5000.0)
        assert_close(cos[pos], rope[f"cos_dim{dk}"], 1e-6)
        assert_close(sin[pos], rope[f"sin_dim{dk}"], 1e-6)


def test_sentencepiece_decode_cases() -> None:
    cases = json.loads((GOLDEN / "expected" / "sp_decode_cases.json").read_text())
    for name, spec in cases.items():
        tok = SentencePieceTokenizer(GOLDEN / "models" / f"{name}_tokenizer.model")
        assert tok.size == spec["vocab_size"]
        for case in spec["cases"]:
            assert tok.decode(case["ids"]) == case["decode"]
            assert [tok.piece(i) for i in case["ids"]] == case["pieces"]


def test_model_facts_match_goldens() -> None:
    for model in MODELS:
        exp = expected(model)
        eng = engine(model)
        assert eng.model.num_classes == exp["num_classes"]
        assert eng.model.blank_id == exp["blank_id"]
        assert sum(p.numel() for p in eng.model.parameters()) == exp["n_params"]
        if exp["max_symbols_per_step"] is not None:
            assert eng.model.max_symbols == exp["max_symbols_per_step"]


def test_checkpoint_cfg_is_plain_and_complete() -> None:
    ckpt = load_checkpoint(GOLDEN / "models" / "v3_e2e_rnnt.ckpt")
    assert ckpt.cfg == expected("v3_e2e_rnnt")["cfg"]
    model, tok = build_model(ckpt)
    assert model.kind == "rnnt" and tok.size == 1024


@pytest.mark.parametrize("name", ["v2_ctc", "v3_ctc"])
def test_torchaudio_filterbank_and_window_match_the_checkpoint_buffers(name: str) -> None:
    """Our fresh buffers (torchaudio's HTK filterbank, periodic Hann) are the reference's: a config
    alone builds the same features as the checkpoint it came with."""
    from pipeline.asr.features import hann_window, mel_filterbank

    ckpt = load_checkpoint(GOLDEN / "models" / f"{name}.ckpt")
    pre = ckpt.cfg["preprocessor"]
    stored_fb = ckpt.state_dict["preprocessor.featurizer.0.mel_scale.fb"]
    stored_window = ckpt.state_dict["preprocessor.featurizer.0.spectrogram.window"]
    fb = mel_filterbank(stored_fb.shape[0], int(pre["features"]), int(ckpt.cfg["sample_rate"]))
    assert fb.shape == stored_fb.shape
    torch.testing.assert_close(fb, stored_fb.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(hann_window(stored_window.shape[0]), stored_window.float(), atol=1e-7, rtol=0)
