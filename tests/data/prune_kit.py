"""Rebuilds tests/data/kit from a GigaAM conformance kit: `python tests/data/prune_kit.py KIT_DIR`.

The kit's goldens hold intermediate tensors no test reads and padding past each input's length; the
repository keeps only what the suite and the benchmarks read, compressed, so a clone proves itself.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "kit"
# Intermediate stages (subsampling, first layer) are checked on the short inputs only: the long ones
# add megabytes and exercise no other code path than the final encoder output, kept for every input.
STAGE_INPUTS = {0, 1, 4, 5}


def keep(key: str) -> bool:
    if key.startswith(("subsampled_single_", "layer0_out_single_")):
        return int(key.rsplit("_", 1)[1]) in STAGE_INPUTS
    return True


def prune(src: Path, dst: Path) -> None:
    arrays = dict(np.load(src))
    if "encoded_batch" in arrays:  # frames past each input's length are padding no test compares
        enc = arrays["encoded_batch"].copy()
        for i, n in enumerate(arrays["encoded_len_batch"].tolist()):
            enc[i, :, n:] = 0
        arrays["encoded_batch"] = enc
    np.savez_compressed(dst, **{k: v for k, v in arrays.items() if keep(k)})


def main(kit: Path) -> None:
    golden = kit / "golden"
    for sub in ("audio", "expected", "models", "configs"):
        (OUT / sub).mkdir(parents=True, exist_ok=True)
    for f in sorted((golden / "audio").glob("*.wav")):
        shutil.copy(f, OUT / "audio" / f.name)
    for f in sorted((golden / "models").iterdir()):
        if f.suffix in (".ckpt", ".model"):
            shutil.copy(f, OUT / "models" / f.name)
    for f in sorted((kit / "configs").glob("*.yaml")):
        shutil.copy(f, OUT / "configs" / f.name)
    for f in sorted((golden / "expected").iterdir()):
        if f.suffix == ".npz":
            prune(f, OUT / "expected" / f.name)
        elif f.suffix == ".json":
            shutil.copy(f, OUT / "expected" / f.name)
    shutil.copy(golden / "README.md", OUT / "GOLDEN_README.md")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
