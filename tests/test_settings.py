"""Settings: sources and precedence, validation, and docs/configuration.md listing every field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.settings import Settings, SettingsError, load_settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    text = DOC.read_text()
    missing = [name for name in Settings.model_fields if f"`GIGAAM_{name.upper()}`" not in text]
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
        ({"GIGAAM_API_KEYS_REQUIRED": "ture"}, "GIGAAM_API_KEYS_REQUIRED: input should be a valid boolean.*'ture'"),
        ({"GIGAAM_WEBHOOK_ALLOW_PRIVATE": "maybe"}, "GIGAAM_WEBHOOK_ALLOW_PRIVATE: input should be a valid boolean"),
        ({"GIGAAM_INFER_CONCURRENCY": "many"}, "GIGAAM_INFER_CONCURRENCY: input should be a valid integer"),
        ({"GIGAAM_INFER_CONCURRENCY": "0"}, "GIGAAM_INFER_CONCURRENCY: input should be greater than or equal to 1"),
        ({"GIGAAM_API_MAX_UPLOAD_BYTES": "-1"}, "GIGAAM_API_MAX_UPLOAD_BYTES: input should be greater than or equal to 1"),
        ({"GIGAAM_API_RATE_CALLS": "-3"}, "GIGAAM_API_RATE_CALLS: input should be greater than or equal to 0"),
        ({"GIGAAM_RETENTION": "0"}, "GIGAAM_RETENTION: input should be greater than 0"),
        ({"GIGAAM_WEBHOOK_TIMEOUT": "nan"}, "GIGAAM_WEBHOOK_TIMEOUT"),
        ({"GIGAAM_API_PORT": "70000"}, "GIGAAM_API_PORT: input should be less than or equal to 65535"),
        ({"GIGAAM_SEGMENT_MAX": "31"}, "GIGAAM_SEGMENT_MAX"),
        ({"GIGAAM_PRECISION": "fp8"}, "GIGAAM_PRECISION: input should be 'auto', 'fp32', 'fp16', 'bf16' or 'int8'"),
        ({"GIGAAM_DEVICE": "tpu"}, "GIGAAM_DEVICE: value error, use auto, cpu, cuda or cuda:N"),
        ({"GIGAAM_LOG_LEVEL": "chatty"}, "GIGAAM_LOG_LEVEL"),
        ({"GIGAAM_INBOX_AFTER": "shred"}, "GIGAAM_INBOX_AFTER: input should be 'move', 'keep' or 'delete'"),
        ({"GIGAAM_OUTPUT_FORMATS": "txt,docx"}, "GIGAAM_OUTPUT_FORMATS: input should be 'txt'.*not 'docx'"),
        ({"GIGAAM_CONFIG": "/nonexistent.toml"}, "no such file"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(env: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings({"GIGAAM_DATA_DIR": str(tmp_path), **env})


def test_accepted_spellings(tmp_path: Path) -> None:
    env = {"GIGAAM_DATA_DIR": str(tmp_path), "GIGAAM_API_KEYS_REQUIRED": "off", "GIGAAM_LOG_JSON": "yes"}
    s = load_settings({**env, "GIGAAM_LOG_LEVEL": "debug", "GIGAAM_DEVICE": "cuda:1", "GIGAAM_MODEL": ""})
    assert (s.api_keys_required, s.log_json, s.log_level, s.device, s.model) == (False, True, "DEBUG", "cuda:1", "v3_e2e_rnnt")


def test_bad_toml_value_names_the_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("api_keys_required = 'ture'\ninfer_batch_size = -2\n")
    with pytest.raises(SettingsError) as err:
        load_settings({"GIGAAM_DATA_DIR": str(tmp_path)})
    assert "config.toml: api_keys_required" in str(err.value) and "config.toml: infer_batch_size" in str(err.value)


def test_a_service_with_a_bad_setting_exits_with_one_line(tmp_path: Path) -> None:
    """Fail closed at start: a typo that would turn authentication off stops the API instead."""
    env = {"GIGAAM_DATA_DIR": str(tmp_path), "GIGAAM_API_KEYS_REQUIRED": "ture", "PATH": "/usr/bin:/bin"}
    for argv in (["-m", "services.api"], ["-m", "pipeline.cli", "up"]):
        done = subprocess.run([sys.executable, *argv], env={**env, "PYTHONPATH": str(DOC.parents[1])},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0, argv
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: GIGAAM_API_KEYS_REQUIRED:"), (argv, done.stderr)


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
