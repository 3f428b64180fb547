"""Engine throughput on full-size random-weight v3 models (same compute as the real ones).

    python -m bench.engine [--models v3_ctc,v3_e2e_rnnt] [--precisions fp32,bf16,int8]
                           [--batches 1,4,16] [--lengths 10,20] [--device cpu|cuda]

Reports the real-time factor (audio seconds / wall seconds for features + encoder + decoding)
against a baseline run in the same process: one segment at a time with per-utterance greedy
decoding, which is how the reference library is used. Random weights decode unrealistically, so
the blank logit is shifted until greedy decoding emits a speech-like token rate.
"""

from __future__ import annotations

import argparse
import json
import time
import wave
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from pipeline.asr.decoding import Hypothesis, ctc_greedy, rnnt_greedy
from pipeline.asr.engine import Engine, configure_cpu_threads
from pipeline.asr.model import random_model
from pipeline.asr.tokenizer import CharTokenizer, SentencePieceTokenizer
from tests.kit import AUDIO, CONFIGS, MODELS_DIR

TARGET_RATE = {"v3_ctc": 0.5, "v3_rnnt": 0.5, "v3_e2e_ctc": 0.25, "v3_e2e_rnnt": 0.3}


def speech(seconds: float) -> np.ndarray:
    """Real speech from the kit, repeated to length, so features and VAD-like content are realistic."""
    parts = []
    for f in sorted(AUDIO.glob("0[1-4]_*.wav")):
        with wave.open(str(f)) as w:
            parts.append(np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16))
    audio = np.concatenate(parts).astype(np.float32) / 32768.0
    n = int(seconds * 16000)
    return np.tile(audio, n // audio.size + 1)[:n]


def build(name: str, device: str, precision: str) -> Engine:
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    model = random_model(cfg)
    vocab = cfg["decoding"].get("vocabulary")
    tok = CharTokenizer(vocab) if vocab else SentencePieceTokenizer(MODELS_DIR / f"{name}_tokenizer.model")
    return Engine(model, tok, device=device, precision=precision, name=name)


def blank_bias(engine: Engine) -> torch.Tensor:
    head = engine.model.head
    return head.decoder_layers[0].bias if engine.model.kind == "ctc" else head.joint.joint_net[1].bias


def calibrate(engine: Engine, target: float) -> float:
    """Shift the blank logit (bisection) until greedy decoding emits `target` tokens per frame."""
    audio = [torch.from_numpy(speech(10.0))]
    encoded, lens, _ = engine.forward(audio)
    if engine.model.kind == "rnnt":
        # A random prediction network swings the joint so far that one emission locks every later
        # frame at the symbol cap; damping its projection (same compute) lets frames drive decisions.
        with torch.no_grad():
            engine.model.head.joint.pred.weight.mul_(0.05)
            engine.model.head.joint.pred.bias.zero_()
    bias = blank_bias(engine)
    base = float(bias.detach()[engine.model.blank_id])

    def rate(offset: float) -> float:
        with torch.no_grad():
            bias[engine.model.blank_id] = base + offset
        if engine.model.kind == "ctc":
            with torch.inference_mode():
                hyp = ctc_greedy(engine.model.head(encoded), lens, engine.model.blank_id)[0]
        else:
            hyp = rnnt_greedy(engine.model.head, encoded, lens, engine.model.max_symbols)[0]
        return len(hyp.token_ids) / int(lens[0])

    lo, hi = -20.0, 20.0
    while rate(hi) > target and hi < 1e4:  # random joints can need a large shift
        lo, hi = hi, hi * 2
    for _ in range(24):
        mid = (lo + hi) / 2
        if rate(mid) > target:
            lo = mid
        else:
            hi = mid
    return rate((lo + hi) / 2)


def baseline_decode(engine: Engine, encoded: torch.Tensor, length: int) -> Hypothesis:
    """Upstream-style per-utterance RNN-T loop: joint on one frame, predictor re-run per step."""
    head = engine.model.head
    blank, cap = engine.model.blank_id, engine.model.max_symbols
    hyp = Hypothesis()
    state, last = None, None
    for t in range(length):
        enc_t = head.joint.enc(encoded[0, :, t])[None]
        for _ in range(cap):
            if state is None:
                g, new_state = head.decoder.initial(1, encoded.device)
            else:
                g, new_state = head.decoder.step(torch.tensor([last], device=encoded.device), state)
            k = int(head.joint.logits(enc_t, head.joint.pred(g)).argmax())
            if k == blank:
                break
            hyp.token_ids.append(k)
            hyp.token_frames.append(t)
            last, state = k, new_state
    return hyp


def sync(engine: Engine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)


def run_baseline(engine: Engine, segs: list[np.ndarray]) -> tuple[float, float]:
    """One segment at a time, per-utterance decoding. Returns (wall seconds, decode seconds)."""
    total = dec = 0.0
    for s in segs:
        sync(engine)
        t0 = time.perf_counter()
        encoded, lens, _ = (engine.forward([torch.from_numpy(s)]) if engine.model.kind == "ctc" else _encode(engine, s))
        sync(engine)
        t1 = time.perf_counter()
        if engine.model.kind == "rnnt":
            with torch.inference_mode():
                baseline_decode(engine, encoded, int(lens[0]))
        sync(engine)
        t2 = time.perf_counter()
        total += t2 - t0
        dec += t2 - t1
    return total, dec


def _encode(engine: Engine, s: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, None]:
    wav = torch.from_numpy(s)[None].to(engine.device)
    lens = torch.tensor([s.size], device=engine.device)
    with torch.inference_mode():
        feats, flen = engine.model.preprocessor(wav, lens)
        with engine._autocast():
            encoded, elen = engine.model.encoder(feats, flen)
    return encoded.float(), elen, None


def run_engine(engine: Engine, segs: list[np.ndarray], batch: int) -> tuple[float, float]:
    """Batched engine path. Returns (wall seconds, decode seconds measured separately)."""
    engine.max_batch = batch
    sync(engine)
    t0 = time.perf_counter()
    engine.transcribe(segs)
    sync(engine)
    wall = time.perf_counter() - t0
    # decoding share: re-run decoding alone on encoder outputs of the same batches
    dec = 0.0
    for i in range(0, len(segs), batch):
        encoded, lens, _ = _encode_batch(engine, segs[i : i + batch])
        sync(engine)
        t1 = time.perf_counter()
        if engine.model.kind == "ctc":
            with torch.inference_mode():
                ctc_greedy(engine.model.head(encoded), lens, engine.model.blank_id)
        else:
            rnnt_greedy(engine.model.head, encoded, lens, engine.model.max_symbols)
        sync(engine)
        dec += time.perf_counter() - t1
    return wall, dec


def _encode_batch(engine: Engine, segs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, None]:
    wav = torch.from_numpy(np.stack(segs)).to(engine.device)
    lens = torch.full((len(segs),), segs[0].size, device=engine.device)
    with torch.inference_mode():
        feats, flen = engine.model.preprocessor(wav, lens)
        with engine._autocast():
            encoded, elen = engine.model.encoder(feats, flen)
    return encoded.float(), elen, None


def best_of(repeats: int, fn, *args):  # noqa: ANN001, ANN201
    """Least wall time of a few runs: on a shared machine the minimum is the least disturbed."""
    runs = [fn(*args) for _ in range(repeats)]
    return min(runs, key=lambda r: r[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="v3_ctc,v3_rnnt,v3_e2e_ctc,v3_e2e_rnnt")
    ap.add_argument("--precisions", default="fp32,bf16,int8")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--lengths", default="10,20")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--audio", type=float, default=40.0, help="seconds of audio per measurement (min: one batch)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per measurement; the fastest counts")
    ap.add_argument("--json", type=Path, help="also write the rows to this file")
    args = ap.parse_args()
    if args.device == "cpu":
        print(f"cpu threads: {configure_cpu_threads()}")
    else:
        print(f"device: {torch.cuda.get_device_name(torch.device(args.device))}")
    rows = []
    for name in args.models.split(","):
        baselines: dict[float, float] = {}
        for precision in args.precisions.split(","):
            engine = build(name, args.device, precision)
            rate = calibrate(engine, TARGET_RATE[name])
            print(f"\n{name} {precision}: {rate:.3f} tokens per encoder frame after blank shift")
            for seconds in (float(x) for x in args.lengths.split(",")):
                seg = speech(seconds)
                engine.transcribe([seg])  # warm-up
                if seconds not in baselines:  # the reference way: fp32, one at a time, per-utterance decoding
                    base_n = max(2, int(args.audio / seconds / 2))
                    b_wall, b_dec = best_of(args.repeats, run_baseline, engine, [seg] * base_n)
                    baselines[seconds] = base_n * seconds / b_wall
                    print(f"  {seconds:>4.0f}s baseline (1 at a time, per-utterance decoding): "
                          f"RTF {baselines[seconds]:7.1f}x  decode {100 * b_dec / b_wall:4.1f}%")
                    rows.append(dict(model=name, precision=precision, seconds=seconds, batch=1, mode="baseline",
                                     rtf=baselines[seconds], decode_share=b_dec / b_wall, tokens_per_frame=rate))
                for batch in (int(x) for x in args.batches.split(",")):
                    n = max(batch, int(args.audio / seconds) // batch * batch)
                    segs = [seg] * n
                    engine.max_batch = batch
                    engine.transcribe(segs[:batch])  # warm-up at this shape
                    wall, dec = best_of(args.repeats, run_engine, engine, segs, batch)
                    rtf = n * seconds / wall
                    print(f"  {seconds:>4.0f}s batch {batch:>2}: RTF {rtf:7.1f}x  decode {100 * dec / wall:4.1f}%  "
                          f"x{rtf / baselines[seconds]:.2f} vs baseline")
                    rows.append(dict(model=name, precision=precision, seconds=seconds, batch=batch, mode="engine",
                                     rtf=rtf, decode_share=dec / wall, vs_baseline=rtf / baselines[seconds],
                                     tokens_per_frame=rate))
            del engine
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
