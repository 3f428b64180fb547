"""Where the suite's fixtures live: the tiny-checkpoint conformance kit carried in the repository.

`tests/data/kit` was taken from the GigaAM conformance kit by `tests/data/prune_kit.py`; the suite and
`bench/` read only this copy, so a clone of the repository proves itself.
"""

from __future__ import annotations

from pathlib import Path

KIT = Path(__file__).resolve().parent / "data" / "kit"
GOLDEN = KIT  # audio/, expected/, models/ as in the kit's golden/ folder
AUDIO = KIT / "audio"
MODELS_DIR = KIT / "models"
CONFIGS = KIT / "configs"
# Intermediate encoder stages are kept for these inputs only (see tests/data/prune_kit.py).
STAGE_INPUTS = (0, 1, 4, 5)
