"""Format stage: Transcript -> every output format, and the chosen ones into the output folder."""

from __future__ import annotations

from pathlib import Path, PurePath

from pipeline.formats import render
from pipeline.output import ensure_stignore, write_outputs
from schemas.messages import ALL_FORMATS, TaskOptions, Transcript


def render_all(transcript: Transcript) -> dict[str, bytes]:
    return {fmt: render(transcript, fmt).encode("utf-8") for fmt in ALL_FORMATS}


def write_to_output_dir(
    root: str | Path, transcript: Transcript, options: TaskOptions, rendered: dict[str, bytes]
) -> list[str]:
    """Atomic writes (temp name Syncthing ignores, fsync, rename); same task rewrites in place."""
    root = Path(root)
    ensure_stignore(root)
    stem = options.output_stem or PurePath(transcript.filename).stem or transcript.task_id
    chosen = {fmt: rendered[fmt] for fmt in options.formats if fmt in rendered}
    paths = write_outputs(root, options.output_dir, stem, chosen, transcript.task_id)
    return [str(p) for p in paths]
