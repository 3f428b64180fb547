"""The one settings object. Sources, later wins: defaults, a TOML file (`GIGAAM_CONFIG`, or
`<data_dir>/config.toml` when present), then `GIGAAM_*` environment variables.

docs/configuration.md lists every field; a test keeps the two in sync.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "gigaam-transcriber")


def _default_model_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gigaam")


@dataclass(frozen=True)
class Settings:
    data_dir: str = field(default_factory=_default_data_dir)
    nats_url: str = ""  # empty: `up` starts an embedded nats-server and records its URL in data_dir
    model: str = "v3_e2e_rnnt"  # model name/alias or path to a .ckpt
    model_dir: str = field(default_factory=_default_model_dir)
    model_base_url: str = ""  # where `models pull` and first start download from; empty: the official host
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16 | int8
    cpu_threads: int = 0  # 0: all cores
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_workers: int = 1
    inbox_dir: str = ""  # empty: the inbox service idles
    output_dir: str = ""  # empty: results stay in the object store only
    output_formats: tuple[str, ...] = ("txt", "srt", "json")
    output_rest: bool = False  # also write API tasks into output_dir
    retention: float = 86400.0  # seconds objects, events and rows live
    infer_concurrency: int = 3  # jobs in flight per infer process
    decode_concurrency: int = 2  # jobs in flight per decode process
    format_concurrency: int = 4  # jobs in flight per format process
    infer_batch_size: int = 16  # segments per engine call
    infer_batch_wait: float = 0.05  # seconds to wait for more segments before running a batch
    max_deliver: int = 5  # deliveries of a job before it goes to the dead-letter stream
    ack_wait: float = 60.0  # seconds before an un-acked job is redelivered
    segment_max: float = 25.0  # VAD segment cap, seconds
    log_level: str = "INFO"
    log_json: bool = False
    nats_replicas: int = 1  # replicas of every stream and bucket (3 on a 3-node NATS cluster)
    inbox_polling: bool = False  # poll the inbox instead of inotify (network and FUSE mounts)
    inbox_stable_interval: float = 2.0  # seconds a file's size and mtime must stay unchanged before it is taken
    inbox_rescan_interval: float = 60.0  # seconds between full inbox rescans (files added while down, lost events)
    inbox_after: str = "move"  # after submission: move (to inbox_processed_dir) | keep | delete
    inbox_processed_dir: str = ""  # empty: processed/ beside the inbox
    inbox_failed_dir: str = ""  # empty: failed/ beside the inbox
    api_max_upload_bytes: int = 2 * 1024**3  # largest accepted upload in bytes (413 above it)
    api_rate_uploads: int = 10  # uploads per API key per rate window, across all API workers; 0: unlimited
    api_rate_calls: int = 30  # other API calls per key per rate window; 0: unlimited
    api_rate_window: float = 60.0  # seconds of the rate-limit window
    api_keys_required: bool = True  # False: requests without a key act as one shared anonymous user
    api_first_key: bool = True  # make and print the first key at first start; off where stdout is a log
    api_sync_timeout: float = 3600.0  # seconds POST /v1/audio/transcriptions waits for its transcript
    api_public_url: str = ""  # base URL for links sent in webhooks (behind a proxy); empty: from the request
    api_cors_origins: str = ""  # comma-separated browser origins allowed to call the API; empty: no CORS
    api_proxies: int = 0  # proxies in front whose X-Forwarded-For is trusted for the client address (nginx: 1)
    webhook_allow_private: bool = False  # allow callback_url on loopback, private and link-local addresses
    webhook_max_attempts: int = 8  # deliveries of one webhook before it is given up
    webhook_backoff: float = 5.0  # seconds before the first webhook retry; doubles each time, at most 1 h
    webhook_timeout: float = 10.0  # seconds one webhook POST may take

    @property
    def nats_url_file(self) -> Path:
        return Path(self.data_dir) / "nats.url"

    @property
    def db_path(self) -> Path:
        return Path(self.data_dir) / "registry.duckdb"

    def resolved_nats_url(self) -> str:
        """Explicit URL, else the one recorded by a running `up` in the same data dir."""
        if self.nats_url:
            return self.nats_url
        try:
            return self.nats_url_file.read_text().strip()
        except FileNotFoundError:
            raise SettingsError(
                f"no NATS URL: set GIGAAM_NATS_URL or start the stack with `gigaam-transcriber up` "
                f"(data dir {self.data_dir})"
            ) from None

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


class SettingsError(ValueError):
    pass


def _coerce(f: dataclasses.Field, raw: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            return str(raw).strip().lower() in ("1", "true", "yes", "on")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind.startswith("tuple"):
            if isinstance(raw, (list, tuple)):
                return tuple(str(x).strip() for x in raw)
            return tuple(x.strip() for x in str(raw).split(",") if x.strip())
        return str(raw)
    except ValueError:
        raise SettingsError(f"GIGAAM_{f.name.upper()}: cannot read {raw!r} as {kind}") from None


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    env = os.environ if env is None else env
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}

    data_dir = env.get("GIGAAM_DATA_DIR") or _default_data_dir()
    config_path = env.get("GIGAAM_CONFIG") or os.path.join(data_dir, "config.toml")
    if os.path.isfile(config_path):
        with open(config_path, "rb") as fh:
            try:
                doc = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise SettingsError(f"{config_path}: {exc}") from None
        for key, raw in doc.items():
            if key not in fields:
                raise SettingsError(f"{config_path}: unknown setting {key!r}")
            values[key] = _coerce(fields[key], raw)
    elif env.get("GIGAAM_CONFIG"):
        raise SettingsError(f"GIGAAM_CONFIG: no such file {config_path}")

    for name, f in fields.items():
        raw = env.get(f"GIGAAM_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = _coerce(f, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    if s.precision not in ("auto", "fp32", "fp16", "bf16", "int8"):
        raise SettingsError(f"GIGAAM_PRECISION must be auto, fp32, fp16, bf16 or int8, not {s.precision!r}")
    if s.infer_concurrency < 1:
        raise SettingsError("GIGAAM_INFER_CONCURRENCY must be at least 1")
    if s.retention <= 0:
        raise SettingsError("GIGAAM_RETENTION must be positive (seconds)")
    from schemas.messages import ALL_FORMATS

    bad = [f for f in s.output_formats if f not in ALL_FORMATS]
    if bad:
        raise SettingsError(f"GIGAAM_OUTPUT_FORMATS: unknown format(s) {bad}; choose from {list(ALL_FORMATS)}")
