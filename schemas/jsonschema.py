"""JSON Schema (draft 2020-12) generated from the message types, so the wire contract has one source.

    python -m schemas.jsonschema --write   # regenerate schemas/v1/*.schema.json
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import orjson

from schemas import messages

EXPORTED = (
    messages.DecodeJob,
    messages.InferJob,
    messages.FormatJob,
    messages.Transcript,
    messages.TaskEvent,
    messages.TaskRecord,
    messages.RegistryRequest,
    messages.RegistryReply,
)
OUT_DIR = Path(__file__).parent / f"v{messages.SCHEMA_VERSION}"


def _type_schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return {"anyOf": [_type_schema(a, defs) for a in typing.get_args(tp)]}
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin in (tuple, list):
        return {"type": "array", "items": _type_schema(typing.get_args(tp)[0], defs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(typing.get_args(tp)[1], defs)}
    if dataclasses.is_dataclass(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # stand-in while recursing into the fields
            defs[tp.__name__] = _object_schema(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    simple = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
    if tp in simple:
        return {"type": simple[tp]}
    raise TypeError(f"no JSON Schema mapping for {tp!r}")


def _object_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props, required = {}, []
    for f in dataclasses.fields(cls):
        props[f.name] = _type_schema(hints[f.name], defs)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    doc = (cls.__doc__ or "").strip().splitlines()
    schema = {"type": "object", "properties": props, "required": required}
    if doc and not doc[0].startswith(cls.__name__ + "("):
        schema["description"] = doc[0]
    return schema


def schema_for(cls: type) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    body = _object_schema(cls, defs)
    doc = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"gigaam-transcriber/v{messages.SCHEMA_VERSION}/{cls.__name__}",
        "title": cls.__name__,
        **body,
    }
    if defs:
        doc["$defs"] = defs
    return doc


def rendered() -> dict[str, bytes]:
    opts = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
    return {f"{cls.__name__}.schema.json": orjson.dumps(schema_for(cls), option=opts) + b"\n" for cls in EXPORTED}


if __name__ == "__main__":
    if "--write" in sys.argv:
        OUT_DIR.mkdir(exist_ok=True)
        for name, body in rendered().items():
            (OUT_DIR / name).write_bytes(body)
        print(f"wrote {len(EXPORTED)} schemas to {OUT_DIR}")
    else:
        sys.stdout.write(orjson.dumps({k: orjson.loads(v) for k, v in rendered().items()}, option=orjson.OPT_INDENT_2).decode())
