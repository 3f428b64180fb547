"""Versioned contracts shared by every service: messages on the bus, events, registry records.

Every shape that crosses a process boundary is defined once here (`messages.py`); the JSON Schema
files under `v1/` are generated from these types (`python -m schemas.jsonschema --write`) and a
test keeps them in sync.
"""

from schemas.messages import *  # noqa: F401,F403
from schemas.subjects import *  # noqa: F401,F403
