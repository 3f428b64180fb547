"""An incremental multipart/form-data parser (RFC 7578): bytes in as they arrive, events out.

It keeps at most one delimiter's worth of bytes beyond what it has handed out, so a 2 GB part
passes through in constant memory. Part headers are bounded; the preamble and epilogue are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import unquote

MAX_HEADER_BYTES = 16 * 1024
MAX_PREAMBLE_BYTES = 64 * 1024
MAX_PARTS = 64

_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _DONE = range(5)

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
        self._delimiter = b"\r\n" + self._dash_boundary
        self._buffer = bytearray()
        self._state = _PREAMBLE
        self._skipped = 0
        self.parts = 0

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> Iterator[Event]:
        if self._state == _DONE:
            return  # epilogue: ignored
        self._buffer += data
        while True:
            if self._state == _PREAMBLE:
                if not self._skip_preamble():
                    return
            elif self._state == _AFTER_DELIMITER:
                if len(self._buffer) < 2:
                    return
                marker = bytes(self._buffer[:2])
                del self._buffer[:2]
                if marker == b"--":
                    self._state = _DONE
                    self._buffer.clear()
                    return
                if marker != b"\r\n":
                    raise MultipartError("a boundary must be followed by CRLF or --")
                self._state = _HEADERS
            elif self._state == _HEADERS:
                if self._buffer.startswith(b"\r\n"):  # a part without headers
                    headers, consumed = {}, 2
                else:
                    end = self._buffer.find(b"\r\n\r\n")
                    if end < 0:
                        if len(self._buffer) > MAX_HEADER_BYTES:
                            raise MultipartError("part headers are too long")
                        return
                    headers, consumed = _parse_headers(bytes(self._buffer[:end])), end + 4
                del self._buffer[:consumed]
                self.parts += 1
                if self.parts > MAX_PARTS:
                    raise MultipartError(f"more than {MAX_PARTS} parts")
                self._state = _BODY
                yield headers
            elif self._state == _BODY:
                end = self._buffer.find(self._delimiter)
                if end >= 0:
                    if end:
                        yield bytes(self._buffer[:end])
                    del self._buffer[: end + len(self._delimiter)]
                    self._state = _AFTER_DELIMITER
                    yield None
                    continue
                # everything but a possible delimiter start is certainly part data
                safe = len(self._buffer) - len(self._delimiter) + 1
                if safe > 0:
                    yield bytes(self._buffer[:safe])
                    del self._buffer[:safe]
                return
            else:
                return

    def _skip_preamble(self) -> bool:
        """The first boundary may open the body directly or follow a preamble line."""
        at = self._buffer.find(self._dash_boundary)
        while at > 0 and not (at >= 2 and self._buffer[at - 2 : at] == b"\r\n"):
            at = self._buffer.find(self._dash_boundary, at + 1)
        if at < 0:
            keep = len(self._dash_boundary) + 1
            drop = max(0, len(self._buffer) - keep)
            self._skipped += drop
            del self._buffer[:drop]
            if self._skipped > MAX_PREAMBLE_BYTES:
                raise MultipartError("no opening boundary found")
            return False
        del self._buffer[: at + len(self._dash_boundary)]
        self._state = _AFTER_DELIMITER
        return True

    def close(self) -> None:
        if self._state != _DONE:
            raise MultipartError("the body ended before the closing boundary")


def _parse_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise MultipartError("a part header line has no name")
        # Clients send non-ASCII file names as raw UTF-8 (browsers, curl, requests) or RFC 5987.
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("utf-8", "replace")
    return headers


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
