"""The work of each pipeline stage as plain functions (files in, files out), so the services only move
bytes between the bus and these functions and everything here is testable without NATS.

Progress is reported on one 0-100 scale across stages.
"""

PROGRESS = {"queued": 0, "decoding": 2, "transcribing": 10, "formatting": 95, "done": 100}


def transcribing_progress(done: int, total: int) -> int:
    """Segments finished map onto 10..94."""
    if total <= 0:
        return PROGRESS["formatting"] - 1
    return PROGRESS["transcribing"] + (PROGRESS["formatting"] - 1 - PROGRESS["transcribing"]) * done // total
