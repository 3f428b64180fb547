"""multipart/form-data (RFC 7578) in constant memory: bytes in as they arrive, events out.

The byte-level parsing is python-multipart's (the parser Starlette and FastAPI use). Around it this
module adds what the upload path needs regardless of how the body is split across reads: a bounded
preamble (the library accepts only blank lines before the first boundary; RFC 2046 allows text),
at most MAX_HEADER_BYTES of part headers in all, at most MAX_PARTS parts, and events in the shape
`pipeline/api/uploads.py` consumes.

The Content-Disposition parameter parsing below stays hand-written: python-multipart's
`parse_options_header` drops RFC 5987 `filename*` (which some clients send for non-ASCII names) and
turns a doubled backslash into one, which breaks the raw Windows paths clients put in `filename`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import unquote

import python_multipart
from python_multipart.exceptions import MultipartParseError

MAX_HEADER_BYTES = 16 * 1024  # all header lines of one part together
MAX_PREAMBLE_BYTES = 64 * 1024
MAX_PARTS = 64
MAX_HEADER_LINES = 16  # per part; a form-data part needs two or three

# One `; name=value` parameter; the value is a quoted string (with backslash escapes) or a token.
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_BOUNDARY_OK = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{1,70}$")


class MultipartError(ValueError):
    pass


# What `feed` yields: a part's headers (dict) when it starts, its bytes (in pieces), None when it ends.
Event = dict[str, str] | bytes | None


class MultipartParser:
    def __init__(self, boundary: str) -> None:
        self._dash_boundary = b"--" + boundary.encode("ascii")
        self._preamble: bytearray | None = bytearray()  # None once the first boundary is found
        self._skipped = 0
        self._events: list[Event] = []
        self._header_bytes = 0
        self._name = bytearray()
        self._value = bytearray()
        self._headers: dict[str, str] = {}
        self._done = False
        self.parts = 0
        self._parser = python_multipart.MultipartParser(
            boundary.encode("ascii"),
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
            max_header_count=MAX_HEADER_LINES,
            max_header_size=MAX_HEADER_BYTES,
        )

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, data: bytes) -> Iterator[Event]:
        if self._done:
            return  # epilogue: ignored
        if self._preamble is not None:
            data = self._skip_preamble(data)
            if not data:
                return
        try:
            self._parser.write(data)
        except MultipartParseError as exc:
            raise MultipartError(_reason(exc)) from None
        events, self._events = self._events, []
        yield from events

    def close(self) -> None:
        if not self._done:
            raise MultipartError("the body ended before the closing boundary")

    def _skip_preamble(self, data: bytes) -> bytes:
        """Bytes before the first boundary (which opens the body or follows CRLF) are dropped, at most
        MAX_PREAMBLE_BYTES of them however the body is split; returns what follows them."""
        buffer = self._preamble
        assert buffer is not None
        buffer += data
        at = buffer.find(self._dash_boundary)
        while at > 0 and buffer[at - 2 : at] != b"\r\n":
            at = buffer.find(self._dash_boundary, at + 1)
        if at < 0:  # keep only what could be the start of the boundary line
            drop = max(0, len(buffer) - len(self._dash_boundary) - 1)
            at_most = drop
        else:
            at_most = at
        if self._skipped + at_most > MAX_PREAMBLE_BYTES:
            raise MultipartError("no opening boundary found")
        if at < 0:
            self._skipped += drop
            del buffer[:drop]
            return b""
        self._preamble = None
        return bytes(buffer[at:])

    # python-multipart callbacks: data ones get (buffer, start, end), notifications nothing.

    def _part_begin(self) -> None:
        self._header_bytes = 0
        self._headers = {}

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            raise MultipartError("part headers are too long")

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self._value += data[start:end]

    def _header_end(self) -> None:
        # Clients send non-ASCII file names as raw UTF-8 (browsers, curl, requests) or RFC 5987.
        name = self._name.decode("latin-1").strip().lower()
        if not name:
            raise MultipartError("a part header line has no name")
        self._headers[name] = self._value.decode("utf-8", "replace").strip()
        self._name.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise MultipartError(f"more than {MAX_PARTS} parts")
        self._events.append(self._headers)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._events.append(bytes(data[start:end]))

    def _part_end(self) -> None:
        self._events.append(None)

    def _end(self) -> None:
        self._done = True


def _reason(exc: MultipartParseError) -> str:
    """The library's message without its byte offset, which means nothing to the client."""
    return re.sub(r"\s*\(\d+\)$|\s+at index \d+$", "", str(exc)) or "malformed multipart body"


def boundary_of(content_type: str | None) -> str | None:
    """The boundary of a multipart/form-data Content-Type, None for any other type."""
    if not content_type:
        return None
    kind, params = parse_header_value(content_type)
    boundary = params.get("boundary", "")
    if kind != "multipart/form-data" or not _BOUNDARY_OK.match(boundary) or boundary.endswith(" "):
        return None
    return boundary


def parse_header_value(value: str) -> tuple[str, dict[str, str]]:
    """`type; a=1; b="x y"` -> ("type", {"a": "1", "b": "x y"}); parameter names lower-cased."""
    head, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(";" + rest):
        raw = match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            # Only \" is unescaped: clients send Windows paths with raw backslashes.
            raw = raw[1:-1].replace('\\"', '"')
        params[match.group(1).lower()] = raw
    return head.strip().lower(), params


def disposition_filename(params: dict[str, str]) -> str | None:
    """RFC 5987 `filename*` wins over `filename`. Browsers and urllib3 escape `"` as %22 and line
    breaks as %0D/%0A inside `filename`; those (only) are decoded back."""
    extended = params.get("filename*")
    if extended:
        charset, _, rest = extended.partition("'")
        _language, _, encoded = rest.partition("'")
        try:
            return unquote(encoded, encoding=charset or "utf-8", errors="replace")
        except LookupError:  # unknown charset name
            return unquote(encoded, errors="replace")
    plain = params.get("filename")
    if plain is None:
        return None
    return plain.replace("%22", '"').replace("%0D", "\r").replace("%0A", "\n")
