"""Settings: sources and precedence, validation, and docs/configuration.md listing every field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.settings import Settings, SettingsError, load_settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    text = DOC.read_text()
    missing = [f.name for f in dataclasses.fields(Settings) if f"`GIGAAM_{f.name.upper()}`" not in text]
    assert not missing, f"docs/configuration.md lacks {missing}"


def test_env_overrides_toml_overrides_defaults(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('model = "ctc"\ninfer_concurrency = 5\noutput_formats = ["txt", "vtt"]\n')
    env = {"GIGAAM_DATA_DIR": str(tmp_path), "GIGAAM_INFER_CONCURRENCY": "7", "GIGAAM_OUTPUT_REST": "1"}
    s = load_settings(env)
    assert (s.model, s.infer_concurrency, s.output_formats, s.output_rest) == ("ctc", 7, ("txt", "vtt"), True)
    assert s.api_port == 8000 and s.db_path == tmp_path / "registry.duckdb"


@pytest.mark.parametrize(
    "env,message",
    [
        ({"GIGAAM_INFER_CONCURRENCY": "many"}, "cannot read 'many' as int"),
        ({"GIGAAM_PRECISION": "fp8"}, "GIGAAM_PRECISION must be"),
        ({"GIGAAM_OUTPUT_FORMATS": "txt,docx"}, "unknown format"),
        ({"GIGAAM_CONFIG": "/nonexistent.toml"}, "no such file"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(env: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings({"GIGAAM_DATA_DIR": str(tmp_path), **env})


def test_unknown_toml_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("modle = 'typo'\n")
    with pytest.raises(SettingsError, match="unknown setting 'modle'"):
        load_settings({"GIGAAM_DATA_DIR": str(tmp_path)})


def test_nats_url_comes_from_the_running_stack(tmp_path: Path) -> None:
    s = load_settings({"GIGAAM_DATA_DIR": str(tmp_path)})
    with pytest.raises(SettingsError, match="no NATS URL"):
        s.resolved_nats_url()
    s.nats_url_file.write_text("nats://127.0.0.1:4222\n")
    assert s.resolved_nats_url() == "nats://127.0.0.1:4222"
