"""The wire contracts: generated JSON Schemas are committed and current, and real messages validate."""

from __future__ import annotations

import time

import jsonschema
import orjson
import pytest

from schemas import jsonschema as gen
from schemas.messages import (
    DecodeJob,
    FormatJob,
    InferJob,
    RegistryReply,
    RegistryRequest,
    SegmentText,
    Span,
    TaskEvent,
    TaskOptions,
    TaskRecord,
    Transcript,
    Word,
    decode,
    encode,
)

SAMPLES = [
    DecodeJob("t1", "t1/media", "запись.mp3", 1234, TaskOptions(formats=("txt",), write_output=True)),
    InferJob("t1", "t1/audio.pcm", 16000, 1.0, (Span(0.0, 0.5), Span(0.6, 1.0)), "a.wav"),
    FormatJob("t1", "t1/transcript.json", "a.wav"),
    Transcript("привет мир", 1.0, "v3_e2e_rnnt", (SegmentText(0.0, 1.0, "привет мир", (Word("привет", 0.0, 0.4),)),)),
    TaskEvent("t1", "completed", time.time(), stage="done", progress=100, outputs={"txt": "t1/result.txt"}),
    TaskRecord("t1", "completed", "done", 100, time.time(), options=TaskOptions()),
    RegistryRequest(op="list", status="failed", limit=5),
    RegistryReply(ok=False, error="not_found", message="task t1 not found"),
]


def test_committed_schemas_are_current() -> None:
    for name, body in gen.rendered().items():
        path = gen.OUT_DIR / name
        assert path.is_file(), f"{name} missing: run python -m schemas.jsonschema --write"
        assert path.read_bytes() == body, f"{name} is stale: run python -m schemas.jsonschema --write"


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_messages_round_trip_and_validate(msg) -> None:  # noqa: ANN001
    wire = encode(msg)
    assert decode(type(msg), wire) == msg
    jsonschema.validate(orjson.loads(wire), gen.schema_for(type(msg)))


def test_schema_rejects_a_wrong_shape() -> None:
    bad = orjson.loads(encode(SAMPLES[0]))
    bad["file_size"] = "big"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, gen.schema_for(DecodeJob))


def test_unknown_fields_from_newer_producers_are_ignored() -> None:
    wire = orjson.loads(encode(SAMPLES[2]))
    wire["added_in_v1_1"] = True
    assert decode(FormatJob, wire) == SAMPLES[2]
