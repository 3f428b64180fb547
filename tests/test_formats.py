import orjson
import pytest

from pipeline.formats import (
    CONTENT_TYPES,
    EXTENSIONS,
    MAX_CUE_CHARS,
    MAX_CUE_SECONDS,
    build_cues,
    render,
)
from schemas.messages import ALL_FORMATS, SegmentText, Transcript, Word, decode


def make(*segments: SegmentText, **kw) -> Transcript:
    text = " ".join(s.text for s in segments)
    return Transcript(
        text=kw.pop("text", text),
        duration=kw.pop("duration", segments[-1].end if segments else 0.0),
        model="v3_e2e_rnnt",
        segments=segments,
        **kw,
    )


def seg(start: float, end: float, text: str, words: tuple[Word, ...] = ()) -> SegmentText:
    return SegmentText(start=start, end=end, text=text, words=words)


def timed_words(text: str, start: float, step: float) -> tuple[Word, ...]:
    return tuple(Word(w, round(start + i * step, 3), round(start + (i + 1) * step - 0.05, 3)) for i, w in enumerate(text.split()))


def test_tables_cover_every_format():
    assert set(CONTENT_TYPES) == set(EXTENSIONS) == set(ALL_FORMATS)
    assert len(set(EXTENSIONS.values())) == len(EXTENSIONS)


def test_unknown_format_names_the_choices():
    with pytest.raises(ValueError, match="docx.*txt.*timecodes.*srt.*vtt.*json"):
        render(make(seg(0, 1, "да")), "docx")


def test_txt_joins_segments():
    t = make(seg(0, 1, "  Привет,  мир. "), seg(1, 2, ""), seg(2, 3, "Как дела?\n"))
    assert render(t, "txt") == "Привет, мир. Как дела?\n"


def test_timecodes_floor_start_ceil_end():
    t = make(seg(0.5, 2.3, "Добрый день."), seg(2.3, 4.0, "  "), seg(3725.2, 3727.0, "Это второй час."))
    assert render(t, "timecodes") == (
        "[00:00:00 - 00:00:03] Добрый день.\n"
        "[01:02:05 - 01:02:07] Это второй час.\n"
    )


def test_timecodes_hours_past_99():
    assert render(make(seg(360000.0, 360001.5, "долго")), "timecodes") == "[100:00:00 - 100:00:02] долго\n"


def test_srt_exact():
    t = make(seg(0.0, 1.5, "Раз."), seg(3725.5, 3729.0005, "Два."))
    assert render(t, "srt") == (
        "1\n00:00:00,000 --> 00:00:01,500\nРаз.\n"
        "\n"
        "2\n01:02:05,500 --> 01:02:09,001\nДва.\n"
    )


def test_vtt_exact():
    t = make(seg(0.0, 1.5, "Раз."), seg(3725.5, 3729.0005, "Два."))
    assert render(t, "vtt") == (
        "WEBVTT\n"
        "\n"
        "00:00:00.000 --> 00:00:01.500\nРаз.\n"
        "\n"
        "01:02:05.500 --> 01:02:09.001\nДва.\n"
    )


@pytest.mark.parametrize(
    ("seconds", "srt"),
    [
        (1.0004, "00:00:01,000"),
        (1.0005, "00:00:01,001"),  # half up on the decimal value, not the binary float
        (2.675, "00:00:02,675"),
        (59.9996, "00:01:00,000"),  # carries into minutes
        (3599.9995, "01:00:00,000"),  # and into hours
        (7322.123, "02:02:02,123"),
        (-0.2, "00:00:00,000"),
    ],
)
def test_millisecond_rounding(seconds, srt):
    t = make(seg(seconds, 8000.0, "x"))
    first_line = render(t, "srt").splitlines()[1]
    assert first_line.startswith(f"{srt} --> ")
    assert render(t, "vtt").splitlines()[2].startswith(f"{srt.replace(',', '.')} --> ")


def test_cues_split_on_words_by_duration():
    text = "раз два три четыре пять шесть семь восемь девять десять"
    t = make(seg(10.0, 20.5, text, timed_words(text, 10.2, 1.0)))
    cues = build_cues(t)
    assert [c.text for c in cues] == ["раз два три четыре пять шесть семь", "восемь девять десять"]
    assert (cues[0].start, cues[0].end) == (10.2, 17.15)
    assert (cues[1].start, cues[1].end) == (17.2, 20.15)
    assert all(c.end - c.start <= MAX_CUE_SECONDS for c in cues)
    srt = render(t, "srt")
    assert "1\n00:00:10,200 --> 00:00:17,150\nраз два три четыре пять шесть семь\n\n2\n" in srt
    assert "00:00:17,200 --> 00:00:20,150\nвосемь девять десять\n" in srt


def test_cues_split_on_words_by_length_and_keep_punctuation():
    words = ["Синхрофазотрон"] * 12
    text = ", ".join(words) + "."
    # Words as the engine reports them lack the punctuation; the cue text keeps it.
    t = make(seg(0.0, 6.0, text, tuple(Word(w.lower(), i * 0.5, i * 0.5 + 0.4) for i, w in enumerate(words))))
    cues = build_cues(t)
    assert len(cues) > 1
    assert all(len(c.text) <= MAX_CUE_CHARS for c in cues)
    assert " ".join(c.text for c in cues) == text
    assert all(a.end <= b.start for a, b in zip(cues, cues[1:]))


def test_cue_text_falls_back_to_words_when_they_do_not_line_up():
    words = tuple(Word(w, i, i + 0.9) for i, w in enumerate("один два три четыре пять шесть семь восемь девять".split()))
    t = make(seg(0.0, 9.0, "одиндва три четыре пять шесть семь восемь девять", words))
    assert " ".join(c.text for c in build_cues(t)) == "один два три четыре пять шесть семь восемь девять"


def test_long_segment_without_words_stays_whole():
    text = "слово " * 40
    t = make(seg(0.0, 30.0, text))
    cues = build_cues(t)
    assert len(cues) == 1 and cues[0].text == text.strip() and (cues[0].start, cues[0].end) == (0.0, 30.0)


def test_no_empty_cues_and_no_blank_lines_inside_cues():
    t = make(seg(0, 1, "   "), seg(1, 2, "первая\n\nвторая"), seg(2, 3, ""))
    assert render(t, "srt") == "1\n00:00:01,000 --> 00:00:02,000\nпервая вторая\n"


def test_vtt_escapes_markup():
    t = make(seg(0, 1, "a < b & c --> d"))
    assert render(t, "vtt").endswith("\na &lt; b &amp; c --&gt; d\n")


def test_json_cyrillic_round_trip():
    words = (Word("Съешь", 0.1234, 0.5), Word("ещё", 0.6, 0.91119))
    t = make(seg(0.0, 1.0, "Съешь ещё", words), seg(1.0, 2.3456, "этих мягких булок", ()), task_id="t1", filename="запись.ogg")
    out = render(t, "json")
    assert "Съешь" in out and "\\u" not in out
    assert out.endswith("}\n") and '\n  "text"' in out  # indented two spaces
    doc = orjson.loads(out.encode())
    assert list(doc) == ["text", "duration", "model", "task_id", "filename", "segments", "words"]
    assert doc["text"] == "Съешь ещё этих мягких булок"
    assert doc["filename"] == "запись.ogg" and doc["task_id"] == "t1"
    assert doc["duration"] == 2.346
    assert doc["segments"][0]["words"] == [
        {"word": "Съешь", "start": 0.123, "end": 0.5},
        {"word": "ещё", "start": 0.6, "end": 0.911},
    ]
    assert doc["segments"][1] == {"start": 1.0, "end": 2.346, "text": "этих мягких булок", "words": []}
    assert [w["word"] for w in doc["words"]] == ["Съешь", "ещё"]
    back = decode(Transcript, out)
    assert back.text == t.text and back.segments[0].words[1].word == "ещё" and back.filename == "запись.ogg"


def test_empty_transcript_every_format():
    t = make(duration=0.0)
    assert render(t, "txt") == ""
    assert render(t, "timecodes") == ""
    assert render(t, "srt") == ""
    assert render(t, "vtt") == "WEBVTT\n"
    doc = orjson.loads(render(t, "json"))
    assert doc["segments"] == [] and doc["words"] == [] and doc["text"] == ""


def test_txt_without_segments_uses_text():
    assert render(make(text=" только текст "), "txt") == "только текст\n"
