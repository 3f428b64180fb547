"""Streamed, bounded uploads: the request body goes through the multipart parser (python-multipart) into a
temporary file in this worker's upload folder; nothing holds the file in memory. Oversized bodies
are refused from Content-Length before a byte is read, or as soon as the bytes pass the cap, and
the connection is then closed instead of draining the rest. Whatever fails, the file is removed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import BinaryIO

from sanic import Request

from pipeline.api.errors import ApiError
from pipeline.api.i18n import Both
from pipeline.api.multipart import (
    MultipartError,
    MultipartParser,
    boundary_of,
    disposition_filename,
    parse_header_value,
)
from pipeline.decode import SUPPORTED_EXTENSIONS, MediaError, ProbeInfo, probe_media

FILE_FIELD = "file"
MAX_FIELD_BYTES = 64 * 1024  # a text field (model, callback_url...) larger than this is refused
FORM_OVERHEAD = 1024 * 1024  # what boundaries and text fields may add to Content-Length beyond the file cap
MAX_FILENAME_BYTES = 200  # UTF-8 bytes; file systems allow 255 and outputs append suffixes
SUPPORTED = ", ".join(sorted(e.lstrip(".") for e in SUPPORTED_EXTENSIONS))


@dataclass
class Upload:
    path: Path
    filename: str | None  # sanitised; None until the file part arrives
    size: int
    fields: dict[str, list[str]] = field(default_factory=dict)

    def field(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    return int(raw) if raw and raw.isascii() and raw.isdigit() else None  # "²".isdigit() is True


def refuse_too_large(request: Request, limit: int) -> ApiError:
    """Answer 413 and close: Sanic would otherwise read up to 100 MB of the rest to keep the connection,
    and would invite an `Expect: 100-continue` client to send the body it is refused."""
    if request.stream is not None:
        request.stream.request_max_size = 0
        request.stream.expecting_continue = False
    return ApiError(413, "file_too_large", limit=limit)


def check_declared_size(request: Request, limit: int) -> None:
    declared = content_length(request)
    if declared is not None and declared > limit + FORM_OVERHEAD:
        raise refuse_too_large(request, limit)


async def receive_upload(request: Request, directory: Path, limit: int, text_fields: frozenset[str]) -> Upload:
    """Parses the streamed multipart body: the `file` part into a temporary file, the named text fields
    into memory, anything else skipped. Raises ApiError (400/413) with the reason."""
    boundary = boundary_of(request.headers.get("content-type"))
    if boundary is None:
        raise ApiError(400, "not_multipart", field=FILE_FIELD)
    check_declared_size(request, limit)
    fd, name = tempfile.mkstemp(dir=directory, prefix="upload-")
    upload = Upload(path=Path(name), filename=None, size=0)
    try:
        with os.fdopen(fd, "wb") as sink:
            await _parse(request, boundary, sink, upload, limit, text_fields)
        if upload.size == 0:
            raise ApiError(400, "empty_file")
        extension = PurePath(upload.filename or "").suffix.lower()
        if extension not in SUPPORTED_EXTENSIONS:
            raise ApiError(400, "unsupported_format", extension=extension or "—", supported=SUPPORTED)
        return upload
    except BaseException:
        upload.discard()
        raise


async def _parse(
    request: Request, boundary: str, sink: BinaryIO, upload: Upload, limit: int, text_fields: frozenset[str]
) -> None:
    parser = MultipartParser(boundary)
    fields: dict[str, list[str]] = defaultdict(list)
    current: str | None = None  # FILE_FIELD, a text field's name, or None while skipping a part
    value = bytearray()
    received = 0
    try:
        while (chunk := await request.stream.read()) is not None:
            received += len(chunk)
            if received > limit + FORM_OVERHEAD:
                raise refuse_too_large(request, limit)
            for event in parser.feed(chunk):
                if isinstance(event, bytes):
                    if current == FILE_FIELD:
                        upload.size += len(event)
                        if upload.size > limit:
                            raise refuse_too_large(request, limit)
                        _write(sink, event)
                    elif current is not None:
                        value += event
                        if len(value) > MAX_FIELD_BYTES:
                            raise ApiError(400, "bad_parameter", name=current, reason=_TOO_LONG)
                elif event is None:
                    if current is not None and current != FILE_FIELD:
                        fields[current].append(value.decode("utf-8", "replace").strip())
                    current = None
                else:
                    current = _start_part(event, upload, text_fields)
                    value.clear()
        parser.close()
    except MultipartError as exc:
        raise ApiError(400, "bad_multipart", reason=str(exc)) from None
    if upload.filename is None:
        raise ApiError(400, "file_missing", field=FILE_FIELD)
    upload.fields = dict(fields)


_TOO_LONG = Both(f"длиннее {MAX_FIELD_BYTES} байт", f"longer than {MAX_FIELD_BYTES} bytes")


def _write(sink: BinaryIO, data: bytes) -> None:
    try:
        sink.write(data)
    except OSError as exc:  # a full or failing disk is the server's trouble, not the client's
        reason = Both(f"загрузку некуда записать ({exc.strerror})", f"no room to store the upload ({exc.strerror})")
        raise ApiError(503, "service_unavailable", reason=reason) from None


def _start_part(headers: dict[str, str], upload: Upload, text_fields: frozenset[str]) -> str | None:
    """Which field the part feeds. The file is the `file` part that carries a file name."""
    kind, params = parse_header_value(headers.get("content-disposition", ""))
    if kind != "form-data" or "name" not in params:
        raise MultipartError("every part needs Content-Disposition: form-data with a name")
    name = params["name"]
    filename = disposition_filename(params)
    if name == FILE_FIELD and filename is not None:
        if upload.filename is not None:
            raise MultipartError(f"more than one file in the {FILE_FIELD} field")
        upload.filename = sanitize_filename(filename)
        return FILE_FIELD
    return name if name in text_fields else None


def sanitize_filename(raw: str) -> str:
    """The last path component, without control or format characters (bidi overrides), with runs of
    whitespace collapsed, leading/trailing dots and spaces removed and the length bounded. Letters of
    every script (Cyrillic included) stay as they are."""
    name = unicodedata.normalize("NFC", raw).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = " ".join(name.split()).strip(" .")
    if len(name.encode()) <= MAX_FILENAME_BYTES:
        return name
    stem, suffix = os.path.splitext(name)
    if len(suffix.encode()) > 16:
        stem, suffix = name, ""
    budget = MAX_FILENAME_BYTES - len(suffix.encode())
    return stem.encode()[:budget].decode("utf-8", "ignore").rstrip(" .") + suffix


async def probe(upload: Upload) -> ProbeInfo:
    """Reads only the headers of the media: refuses non-media with the decoder's reason, cheaply."""
    try:
        return await asyncio.to_thread(probe_media, upload.path)
    except MediaError as exc:
        raise ApiError(400, "bad_media", reason=exc.reason) from None


def prepare_upload_dir(work_dir: Path) -> Path:
    """A folder per worker process (workers on one host share the data dir); folders of workers that
    are gone, with whatever partial uploads they left, are removed."""
    host = socket.gethostname()
    for stale in work_dir.glob(f"uploads-{host}-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    mine = work_dir / f"uploads-{host}-{os.getpid()}"
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir(parents=True)
    return mine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
