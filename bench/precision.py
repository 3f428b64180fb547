"""How often the opt-in CPU precisions (bf16 autocast, int8 dynamic quantisation) agree with fp32.

    python -m bench.precision

On the golden inputs and tiny checkpoints: exact-match rate of token sequences, token agreement
(1 - edit distance / reference length) and the largest encoder difference. The tiny goldens were
tuned to decision margins of ~5e-4, far below bf16 resolution, so these numbers are a lower bound
for the real models, whose margins are much wider.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.asr.engine import Engine


@dataclass
class Agreement:
    model: str
    precision: str
    exact: float  # share of inputs with identical token ids
    tokens: float  # 1 - edit distance / reference tokens, pooled over inputs
    encoder_max_abs: float


def edit_distance(a: list[int], b: list[int]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def agreement(model: str, precision: str, waves: list[np.ndarray], ckpt_dir) -> Agreement:  # noqa: ANN001
    ref = Engine.from_checkpoint(ckpt_dir / f"{model}.ckpt", device="cpu", precision="fp32")
    other = Engine.from_checkpoint(ckpt_dir / f"{model}.ckpt", device="cpu", precision=precision)
    exact, dist, total, worst = 0, 0, 0, 0.0
    for w in waves:
        t = torch.from_numpy(w)
        enc_a, _, hyp_a = ref.forward([t])
        enc_b, _, hyp_b = other.forward([t])
        worst = max(worst, float((enc_a - enc_b).abs().max()))
        exact += hyp_a[0].token_ids == hyp_b[0].token_ids
        dist += edit_distance(hyp_a[0].token_ids, hyp_b[0].token_ids)
        total += max(1, len(hyp_a[0].token_ids))
    return Agreement(model, precision, exact / len(waves), max(0.0, 1 - dist / total), worst)


def main() -> None:
    from tests.test_engine_conformance import FILES, GOLDEN, MODELS, read_wav

    waves = [read_wav(f) for f in FILES]
    print(f"{'model':<12} {'precision':<9} {'exact':>6} {'tokens':>7} {'encoder max|d|':>15}")
    for model in MODELS:
        for precision in ("bf16", "int8"):
            a = agreement(model, precision, waves, GOLDEN / "models")
            print(f"{a.model:<12} {a.precision:<9} {a.exact:>6.2f} {a.tokens:>7.3f} {a.encoder_max_abs:>15.4f}")


if __name__ == "__main__":
    main()
