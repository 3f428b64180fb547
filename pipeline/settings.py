"""The one settings object. Sources, later wins: defaults, a TOML file (`GIGAAM_CONFIG`, or
`<data_dir>/config.toml` when present), then `GIGAAM_*` environment variables.

Parsing fails closed: pydantic reads every value against its declared type and bounds, so an unknown
boolean word (`GIGAAM_API_KEYS_REQUIRED=ture`), a negative size or an unknown precision is a
`SettingsError` naming the variable, never a silent default. Adding a setting is one annotated line.
docs/configuration.md lists every field; a test keeps the two in sync.
"""

from __future__ import annotations

import os
import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources import InitSettingsSource
from pydantic_settings.sources.utils import parse_env_vars

from schemas.messages import ALL_FORMATS


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "gigaam-transcriber")


def _default_model_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gigaam")


def _comma_list(raw: Any) -> Any:
    """Environment variables carry lists as `a,b,c`; TOML carries real arrays."""
    if isinstance(raw, str):
        return tuple(x.strip() for x in raw.split(",") if x.strip())
    return raw


def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise ValueError("use auto, cpu, cuda or cuda:N")
    return value


def _upper(raw: Any) -> Any:
    return raw.upper() if isinstance(raw, str) else raw


# Value types shared by the fields below: bounds are part of the type, so a field stays one line.
Count = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(gt=0)]
Delay = Annotated[float, Field(ge=0)]
Port = Annotated[int, Field(ge=0, le=65535)]
Replicas = Annotated[int, Field(ge=1, le=5)]  # JetStream allows at most 5
SegmentCap = Annotated[float, Field(gt=0, le=30)]  # the engine takes segments up to 30 s
Device = Annotated[str, AfterValidator(_device)]
Precision = Literal["auto", "fp32", "fp16", "bf16", "int8"]
LogLevel = Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)]
Format = Literal[ALL_FORMATS]  # type: ignore[valid-type]
Formats = Annotated[tuple[Format, ...], NoDecode, BeforeValidator(_comma_list)]


class Settings(BaseSettings):
    """Constructed directly (`Settings(model=...)`): defaults plus the given values, nothing read
    from the environment; `load_settings()` adds the TOML file and `GIGAAM_*` variables."""

    model_config = SettingsConfigDict(env_prefix="GIGAAM_", env_ignore_empty=True, extra="forbid", frozen=True)

    data_dir: str = Field(default_factory=_default_data_dir)
    nats_url: str = ""  # empty: `up` starts an embedded nats-server and records its URL in data_dir
    model: str = "v3_e2e_rnnt"  # model name/alias or path to a .ckpt
    model_dir: str = Field(default_factory=_default_model_dir)
    model_base_url: str = ""  # where `models pull` and first start download from; empty: the official host
    device: Device = "auto"  # auto | cpu | cuda | cuda:N
    precision: Precision = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16 | int8
    cpu_threads: NonNegative = 0  # 0: all cores
    api_host: str = "127.0.0.1"
    api_port: Port = 8000
    api_workers: Count = 1
    inbox_dir: str = ""  # empty: the inbox service idles
    output_dir: str = ""  # empty: results stay in the object store only
    output_formats: Formats = ("txt", "srt", "json")
    output_rest: bool = False  # also write API tasks into output_dir
    retention: Seconds = 86400.0  # seconds objects, events and rows live
    infer_concurrency: Count = 3  # jobs in flight per infer process
    decode_concurrency: Count = 2  # jobs in flight per decode process
    format_concurrency: Count = 4  # jobs in flight per format process
    infer_batch_size: Count = 16  # segments per engine call
    infer_batch_wait: Delay = 0.05  # seconds to wait for more segments before running a batch
    max_deliver: Count = 5  # deliveries of a job before it goes to the dead-letter stream
    ack_wait: Seconds = 60.0  # seconds before an un-acked job is redelivered
    segment_max: SegmentCap = 25.0  # VAD segment cap, seconds
    log_level: LogLevel = "INFO"
    log_json: bool = False
    nats_replicas: Replicas = 1  # replicas of every stream and bucket (3 on a 3-node NATS cluster)
    inbox_polling: bool = False  # poll the inbox instead of inotify (network and FUSE mounts)
    inbox_stable_interval: Seconds = 2.0  # seconds a file's size and mtime must stay unchanged before it is taken
    inbox_rescan_interval: Seconds = 60.0  # seconds between full inbox rescans (files added while down, lost events)
    inbox_after: Literal["move", "keep", "delete"] = "move"  # after submission: move (to inbox_processed_dir) | keep | delete
    inbox_processed_dir: str = ""  # empty: processed/ beside the inbox
    inbox_failed_dir: str = ""  # empty: failed/ beside the inbox
    api_max_upload_bytes: Count = 2 * 1024**3  # largest accepted upload in bytes (413 above it)
    api_rate_uploads: NonNegative = 10  # uploads per API key per rate window, across all API workers; 0: unlimited
    api_rate_calls: NonNegative = 30  # other API calls per key per rate window; 0: unlimited
    api_rate_window: Seconds = 60.0  # seconds of the rate-limit window
    api_keys_required: bool = True  # False: requests without a key act as one shared anonymous user
    api_first_key: bool = True  # make and print the first key at first start; off where stdout is a log
    api_sync_timeout: Seconds = 3600.0  # seconds POST /v1/audio/transcriptions waits for its transcript
    api_public_url: str = ""  # base URL for links sent in webhooks (behind a proxy); empty: from the request
    api_cors_origins: str = ""  # comma-separated browser origins allowed to call the API; empty: no CORS
    api_proxies: NonNegative = 0  # proxies in front whose X-Forwarded-For is trusted for the client address (nginx: 1)
    webhook_allow_private: bool = False  # allow callback_url on loopback, private and link-local addresses
    webhook_max_attempts: Count = 8  # deliveries of one webhook before it is given up
    webhook_backoff: Delay = 5.0  # seconds before the first webhook retry; doubles each time, at most 1 h
    webhook_timeout: Seconds = 10.0  # seconds one webhook POST may take

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
        """A copy with some values changed, validated like the original."""
        return Settings(**{**self.model_dump(), **changes})

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """First wins: given values, then the environment and the TOML file when `load_settings` reads them."""
        sources = _SOURCES.get()
        if sources is None:
            return (init_settings,)
        environ, toml = sources
        return (init_settings, _Environ(settings_cls, environ), InitSettingsSource(settings_cls, toml))


class SettingsError(ValueError):
    pass


_SOURCES: ContextVar[tuple[Mapping[str, str], dict[str, Any]] | None] = ContextVar("settings_sources", default=None)


class _Environ(EnvSettingsSource):
    """pydantic-settings' environment parsing over a given mapping (tests pass their own)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def _read_toml(env: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    data_dir = env.get("GIGAAM_DATA_DIR") or _default_data_dir()
    path = env.get("GIGAAM_CONFIG") or os.path.join(data_dir, "config.toml")
    if not os.path.isfile(path):
        if env.get("GIGAAM_CONFIG"):
            raise SettingsError(f"GIGAAM_CONFIG: no such file {path}")
        return path, {}
    with open(path, "rb") as fh:
        try:
            doc = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: {exc}") from None
    unknown = [key for key in doc if key not in Settings.model_fields]
    if unknown:
        raise SettingsError(f"{path}: unknown setting {unknown[0]!r}")
    return path, doc


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    env = os.environ if env is None else env
    toml_path, toml = _read_toml(env)
    given = {k: v for k, v in overrides.items() if v is not None}
    token = _SOURCES.set((env, toml))
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise SettingsError(_explain(exc, env, toml_path, given)) from None
    finally:
        _SOURCES.reset(token)


def _explain(exc: ValidationError, env: Mapping[str, str], toml_path: str, given: dict[str, Any]) -> str:
    """One line naming where each refused value came from: the variable, the TOML key or the option."""
    problems = []
    for err in exc.errors(include_url=False):
        name = str(err["loc"][0]) if err["loc"] else ""
        if name in given:
            where = f"--{name.replace('_', '-')}"
        elif env.get(f"GIGAAM_{name.upper()}"):
            where = f"GIGAAM_{name.upper()}"
        else:
            where = f"{toml_path}: {name} (GIGAAM_{name.upper()})"
        message = err["msg"][:1].lower() + err["msg"][1:]
        problems.append(f"{where}: {message}, not {err['input']!r}")
    return "; ".join(problems)
