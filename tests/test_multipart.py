"""The multipart adapter over python-multipart: the same events and the same limits however the body
is split across reads (every split offset of a small body, one byte at a time, all at once)."""

from __future__ import annotations

import pytest

from pipeline.api.multipart import (
    MAX_HEADER_BYTES,
    MAX_PARTS,
    MAX_PREAMBLE_BYTES,
    MultipartError,
    MultipartParser,
    Event,
    boundary_of,
    disposition_filename,
    parse_header_value,
)

B = "xYzZY-boundary"


def part(headers: str, body: bytes) -> bytes:
    return f"--{B}\r\n{headers}\r\n\r\n".encode() + body + b"\r\n"


def form(*parts: bytes, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    return preamble + b"".join(parts) + f"--{B}--\r\n".encode() + epilogue


FILE = part('Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav', b"RIFF\r\n--x\r-" * 3)
MODEL = part('Content-Disposition: form-data; name="model"', b"rnnt")
BODY = form(MODEL, FILE, preamble=b"preamble line\r\n", epilogue=b"epilogue")


def parse(chunks: list[bytes]) -> list[Event]:
    """Events with adjacent data pieces joined, so any split gives the same list."""
    parser = MultipartParser(B)
    out: list[Event] = []
    for chunk in chunks:
        for event in parser.feed(chunk):
            if isinstance(event, bytes) and out and isinstance(out[-1], bytes):
                out[-1] += event
            else:
                out.append(event)
    parser.close()
    return out


EXPECTED = [
    {"content-disposition": 'form-data; name="model"'},
    b"rnnt",
    None,
    {"content-disposition": 'form-data; name="file"; filename="a.wav"', "content-type": "audio/wav"},
    b"RIFF\r\n--x\r-" * 3,
    None,
]


def test_whole_body() -> None:
    assert parse([BODY]) == EXPECTED


def test_every_split_offset_gives_the_same_events() -> None:
    for at in range(1, len(BODY)):
        assert parse([BODY[:at], BODY[at:]]) == EXPECTED, at


def test_one_byte_at_a_time() -> None:
    assert parse([BODY[i : i + 1] for i in range(len(BODY))]) == EXPECTED


def test_data_that_looks_like_a_boundary_prefix_is_kept() -> None:
    tricky = b"\r\n--" + B[:-1].encode() + b"\r\n-" + B.encode()[:5]
    body = form(part('Content-Disposition: form-data; name="file"; filename="x.wav"', tricky))
    for at in range(1, len(body)):
        assert parse([body[:at], body[at:]])[1] == tricky


def test_missing_final_boundary_is_refused() -> None:
    body = BODY[: BODY.index(f"--{B}--".encode())]
    with pytest.raises(MultipartError, match="before the closing boundary"):
        parse([body])
    with pytest.raises(MultipartError, match="before the closing boundary"):
        parse([])


def test_garbage_after_a_boundary_is_refused() -> None:
    with pytest.raises(MultipartError):
        parse([f"--{B}XX\r\n".encode() + b"rest"])


@pytest.mark.parametrize("split", [None, 1, 100, 4096])
def test_part_headers_over_the_limit_are_refused_however_split(split: int | None) -> None:
    """Issue 10 item 15: the bound held only when the headers arrived in pieces."""
    headers = 'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n' + "\r\n".join(
        f"X-Pad-{i}: {'v' * 1000}" for i in range(MAX_HEADER_BYTES // 1000 + 1)
    )
    body = form(part(headers, b"data"))
    chunks = [body] if split is None else [body[i : i + split] for i in range(0, len(body), split)]
    with pytest.raises(MultipartError):
        parse(chunks)


def test_one_overlong_header_line_is_refused() -> None:
    body = form(part('Content-Disposition: form-data; name="file"; filename="' + "a" * MAX_HEADER_BYTES + '.wav"', b"x"))
    with pytest.raises(MultipartError):
        parse([body])


@pytest.mark.parametrize("split", [None, 7, 65536])
def test_preamble_over_the_limit_is_refused_however_split(split: int | None) -> None:
    body = form(MODEL, preamble=b"p" * (MAX_PREAMBLE_BYTES + 10) + b"\r\n")
    chunks = [body] if split is None else [body[i : i + split] for i in range(0, len(body), split)]
    with pytest.raises(MultipartError, match="no opening boundary"):
        parse(chunks)


def test_preamble_under_the_limit_is_skipped() -> None:
    body = form(MODEL, preamble=b"p" * (MAX_PREAMBLE_BYTES - 100) + b"\r\n")
    assert parse([body[i : i + 999] for i in range(0, len(body), 999)])[1] == b"rnnt"


def test_many_parts_are_refused_past_the_limit() -> None:
    assert len(parse([form(*[MODEL] * MAX_PARTS)])) == 3 * MAX_PARTS
    with pytest.raises(MultipartError, match=f"more than {MAX_PARTS} parts"):
        parse([form(*[MODEL] * (MAX_PARTS + 1))])


def test_a_part_without_headers_and_an_empty_part() -> None:
    body = f"--{B}\r\n\r\nbare\r\n--{B}\r\nContent-Disposition: form-data; name=\"e\"\r\n\r\n\r\n--{B}--".encode()
    assert parse([body]) == [{}, b"bare", None, {"content-disposition": 'form-data; name="e"'}, None]


def test_non_utf8_and_utf8_filenames() -> None:
    raw = "Лекция.wav".encode()
    body = form(part('Content-Disposition: form-data; name="file"; filename="', b"") )  # placeholder shape
    head = f"--{B}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"".encode()
    for name, expected in ((raw, "Лекция.wav"), (b"\xcf\xf0\xe8.wav", "\ufffd\ufffd\ufffd.wav")):
        body = head + name + b'"\r\n\r\nx\r\n' + f"--{B}--".encode()
        disposition = parse([body])[0]["content-disposition"]
        assert disposition_filename(parse_header_value(disposition)[1]) == expected


def test_quoted_names_and_extended_filenames() -> None:
    kind, params = parse_header_value(r'form-data; name="a \"b\"; c"; filename="C:\dir\f.wav"')
    assert (kind, params["name"], params["filename"]) == ("form-data", 'a "b"; c', r"C:\dir\f.wav")
    _, params = parse_header_value("form-data; name=file; filename*=UTF-8''%D0%B0%20b.mp3; filename=\"x.mp3\"")
    assert params["name"] == "file" and disposition_filename(params) == "а b.mp3"
    assert disposition_filename({"filename": "a%22b%0D%0A.wav"}) == 'a"b\r\n.wav'
    assert disposition_filename({"filename*": "nonsense''%41.wav"}) == "A.wav"


def test_boundary_of() -> None:
    assert boundary_of(f"multipart/form-data; boundary={B}") == B
    assert boundary_of('multipart/form-data; boundary="a b"') == "a b"
    assert boundary_of("multipart/form-data; boundary=" + "a" * 71) is None
    assert boundary_of("multipart/mixed; boundary=abc") is None
    assert boundary_of("application/json") is None and boundary_of(None) is None
