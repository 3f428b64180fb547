"""`gigaam-transcriber`: one entry point for operators and users. Each command is a thin shell around
a function in `pipeline/` or `services/`; expected failures print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import orjson

from pipeline.first_run import PreflightError
from pipeline.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from pipeline.bus import Bus

log = logging.getLogger("gigaam")

CONNECT_TIMEOUT = 10.0  # seconds a client command waits for the stack's NATS


class CliError(Exception):
    """An expected failure: printed as one line, exit code 2."""


class _HoldBack(logging.Filter):
    """Swallows records, remembering the last warning: the reason a connection attempt failed."""

    last = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            self.last = record.getMessage().removeprefix("nats gigaam-cli: ")
        return False


async def _connect(settings: Settings) -> Bus:
    """The bus logs every failed attempt, noise for a one-shot command: held back while connecting,
    the last one becomes the reason in the single error line if no server answers."""
    from pipeline.bus import BusTimeout, connect

    url = settings.resolved_nats_url()
    attempts = _HoldBack()
    bus_log = logging.getLogger("pipeline.bus")
    bus_log.addFilter(attempts)
    try:
        return await connect(url, "gigaam-cli", first_connect_timeout=CONNECT_TIMEOUT)
    except BusTimeout:
        reason = attempts.last or f"no answer within {CONNECT_TIMEOUT:.0f}s"
        raise CliError(f"cannot reach NATS at {url}: {reason}; is the stack up?") from None
    finally:
        bus_log.removeFilter(attempts)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    for key in ("model", "device", "precision", "data_dir", "nats_url"):
        if getattr(args, key, None):
            overrides[key] = getattr(args, key)
    return load_settings(**overrides)


# -- models ---------------------------------------------------------------------------------


def cmd_models_list(args: argparse.Namespace) -> int:
    from pipeline.asr.catalog import ALIASES, DEFAULT_MODEL, MODELS

    settings = _settings(args)
    folder = Path(settings.model_dir).expanduser()
    aliases = {v: k for k, v in ALIASES.items()}
    print(f"model directory: {folder}")
    print(f"{'name':<13} {'alias':<9} {'kind':<5} {'asr':<4} {'local':<6} md5")
    for info in MODELS.values():
        present = "yes" if (folder / info.filename).is_file() else "-"
        mark = " (default)" if info.name == DEFAULT_MODEL else ""
        asr = "yes" if info.asr else "no"
        print(f"{info.name:<13} {aliases.get(info.name, ''):<9} {info.kind:<5} {asr:<4} {present:<6} {info.md5}{mark}")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from pipeline.asr.catalog import resolve_name
    from pipeline.asr.store import pull

    settings = _settings(args)
    info = resolve_name(args.name)
    with Progress("[bold]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn()) as bar:
        tasks: dict[str, int] = {}

        def progress(label: str, done: int, total: int | None) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done)

        try:
            path = pull(info, settings.model_dir, base_url=args.base_url or settings.model_base_url or None, progress=progress)
        except OSError as exc:  # network failures are DownloadErrors: this is the local disk
            folder = Path(settings.model_dir).expanduser()
            raise CliError(f"cannot write to the model directory {folder}: {exc.strerror or exc}") from None
    print(f"{info.name}: {path} (MD5 {info.md5} verified)")
    return 0


def cmd_models_verify(args: argparse.Namespace) -> int:
    from pipeline.asr.store import verify

    v = verify(args.path)
    official = f"official {v.official_name}" if v.official_name else "not an official release (MD5 unknown)"
    print(f"{v.path}: OK: {v.model_name or '?'} ({v.kind}), {v.parameters:,} parameters, "
          f"{v.vocabulary} tokens, MD5 {v.md5}, {official}")
    return 0


# -- local ----------------------------------------------------------------------------------


def cmd_local(args: argparse.Namespace) -> int:
    from pipeline.asr.loader import load_engine
    from pipeline.decode import MediaError
    from pipeline.formats import EXTENSIONS, render
    from pipeline.transcribe import transcribe_file

    settings = _settings(args)
    engine = load_engine(settings)
    failures = 0
    outputs = []
    for file in args.files:
        try:
            transcript = transcribe_file(
                engine.transcribe, file, model=engine.name, vad=not args.no_vad, max_segment_s=settings.segment_max
            )
        except MediaError as exc:
            print(f"{file}: {exc.reason}", file=sys.stderr)
            failures += 1
            continue
        except OSError as exc:
            print(f"{file}: {exc.strerror or exc}", file=sys.stderr)
            failures += 1
            continue
        text = render(transcript, args.format)
        if args.output_dir:
            out = Path(args.output_dir) / (Path(file).stem + EXTENSIONS[args.format])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
            print(f"{file} -> {out}", file=sys.stderr)
        elif args.format == "json":
            outputs.append(orjson.loads(text))
        else:
            if len(args.files) > 1:
                print(f"==> {file} <==")
            sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    if outputs:
        doc = outputs[0] if len(args.files) == 1 else outputs
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 1 if failures else 0


# -- stack ----------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    import asyncio

    from pipeline.first_run import preflight
    from pipeline.supervisor import default_services, run_stack

    settings = _settings(args)
    services = args.services.split(",") if args.services else default_services()
    preflight(settings, services)
    return asyncio.run(run_stack(settings, services))


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib

    from pipeline.service import main as service_main

    module = importlib.import_module(f"services.{args.name}")
    service_main(args.name, module.serve)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    import asyncio

    from nats.js.errors import BucketNotFoundError

    from pipeline.submit import submit_file, wait_for_task
    from schemas.messages import TaskOptions

    settings = _settings(args)
    options = TaskOptions(
        model=args.model_name, formats=settings.output_formats, write_output=args.write_output, source="cli"
    )

    async def run() -> int:
        bus = await _connect(settings)
        try:
            code = 0
            for file in args.files:
                if not Path(file).is_file():
                    print(f"{file}: no such file", file=sys.stderr)
                    code = 1
                    continue
                try:
                    task_id = await submit_file(bus, file, options=options)
                except BucketNotFoundError:  # a NATS server no stack has set up
                    raise CliError(
                        f"NATS at {settings.resolved_nats_url()} holds no stack: start one with `gigaam-transcriber up`"
                    ) from None
                print(f"{file}: task {task_id}")
                if args.wait:
                    event = await wait_for_task(bus, task_id, timeout=args.timeout)
                    if event.type == "completed":
                        print(event.text or "")
                    elif event.type == "deleted":
                        print(f"{file}: the task was deleted before it finished", file=sys.stderr)
                        code = 1
                    else:
                        print(f"{file}: failed: {event.error}", file=sys.stderr)
                        code = 1
            return code
        finally:
            await bus.close()

    return asyncio.run(run())


# -- keys -----------------------------------------------------------------------------------


def cmd_keys(args: argparse.Namespace) -> int:
    import asyncio
    from datetime import datetime

    from pipeline.keys import UnknownKey, create_key, list_keys, revoke_key

    settings = _settings(args)

    def when(ts: float | None) -> str:
        return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")

    async def run() -> int:
        bus = await _connect(settings)
        try:
            if args.keys_command == "create":
                secret, record = await create_key(bus, args.name)
                print(f"created {record.id} ({record.name}); the key is shown this once:", file=sys.stderr)
                print(secret)  # alone on stdout, so `KEY=$(gigaam-transcriber keys create bot)` works
            elif args.keys_command == "list":
                row = "{:<13} {:<19}  {:<19}  {:<19}  {}"
                print(row.format("id", "created", "last used", "revoked", "name"))
                for key in await list_keys(bus):
                    print(row.format(key.id, when(key.created), when(key.last_used), when(key.revoked), key.name))
            else:
                try:
                    record = await revoke_key(bus, args.key_id)
                except UnknownKey as exc:
                    raise CliError(str(exc)) from None
                print(f"{record.id} revoked; every API worker refuses it within seconds")
            return 0
        finally:
            await bus.close()

    return asyncio.run(run())


# -- transcribe (users) ---------------------------------------------------------------------


def cmd_transcribe(args: argparse.Namespace) -> int:
    from pipeline.transcribe_cli import run

    return run(args.files, args.server, args.api_key, args.format, args.output_dir)


# -- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from schemas.messages import ALL_FORMATS

    p = argparse.ArgumentParser(prog="gigaam-transcriber", description="GigaAM v3 speech-to-text service")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default from GIGAAM_LOG_LEVEL)")
    sub = p.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="list, download and check model checkpoints")
    msub = models.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="known models and which are downloaded").set_defaults(func=cmd_models_list)
    pull = msub.add_parser("pull", help="download a model into GIGAAM_MODEL_DIR, MD5-checked")
    pull.add_argument("name")
    pull.add_argument("--base-url", help="mirror serving <name>.ckpt files (default: the official address)")
    pull.set_defaults(func=cmd_models_pull)
    verify = msub.add_parser("verify", help="load a .ckpt safely and report what it is")
    verify.add_argument("path")
    verify.set_defaults(func=cmd_models_verify)

    local = sub.add_parser("local", help="transcribe files in this process, no server")
    local.add_argument("files", nargs="+", metavar="FILE")
    local.add_argument("--model", help="model name or .ckpt path (default GIGAAM_MODEL)")
    local.add_argument("--device", help="cpu, cuda, cuda:N (default GIGAAM_DEVICE)")
    local.add_argument("--precision", help="fp32, fp16, bf16, int8 (default: fp16 on CUDA, fp32 on CPU)")
    local.add_argument("--format", choices=ALL_FORMATS, default="txt")
    local.add_argument("--no-vad", action="store_true", help="feed a file of up to 30 s to the engine whole")
    local.add_argument("-o", "--output-dir", help="write <stem>.<ext> files here instead of stdout")
    local.set_defaults(func=cmd_local)

    up = sub.add_parser("up", help="run the whole stack: embedded NATS and every service, supervised")
    up.add_argument("--services", help="comma-separated subset (default: all)")
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="run one service (for compose, systemd, multi-host)")
    serve.add_argument("name", choices=["api", "ingest", "decode", "infer", "format", "registry"])
    serve.set_defaults(func=cmd_serve)

    submit = sub.add_parser("submit", help="submit files to a running stack (operators)")
    submit.add_argument("files", nargs="+", metavar="FILE")
    submit.add_argument("--wait", action="store_true", help="wait for each result and print its text")
    submit.add_argument("--timeout", type=float, default=3600.0)
    submit.add_argument("--model-name", dest="model_name", help="model the task asks for (default: the stack's)")
    submit.add_argument("--write-output", action="store_true", help="also write results to GIGAAM_OUTPUT_DIR")
    submit.set_defaults(func=cmd_submit)

    keys = sub.add_parser("keys", help="API keys of a running stack: create, list, revoke")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kcreate = ksub.add_parser("create", help="make a key and print it (only this once)")
    kcreate.add_argument("name", nargs="?", default="unnamed", help="what or who the key is for")
    ksub.add_parser("list", help="every key: id, created, last used, revoked, name")
    krevoke = ksub.add_parser("revoke", help="stop a key working on every API worker")
    krevoke.add_argument("key_id", help="the key's id (from `keys list`), not the key itself")
    keys.set_defaults(func=cmd_keys)

    transcribe = sub.add_parser("transcribe", help="transcribe files through a running API, with progress")
    transcribe.add_argument("files", nargs="+", metavar="FILE")
    transcribe.add_argument("--server", help="API base URL (default http://GIGAAM_API_HOST:GIGAAM_API_PORT)")
    transcribe.add_argument("--api-key", help="the key (default: GIGAAM_API_KEY)")
    transcribe.add_argument("--format", choices=ALL_FORMATS, default="txt")
    transcribe.add_argument("-o", "--output-dir", help="write <stem>.<ext> files here (default: the current folder)")
    transcribe.set_defaults(func=cmd_transcribe)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.logs import setup_logging

    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        setup_logging(args.log_level or settings.log_level, settings.log_json)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head`
        return 0
    except (CliError, SettingsError, PreflightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # expected domain errors print one line, never a traceback
        from pipeline.asr.catalog import UnknownModel
        from pipeline.asr.checkpoint import CheckpointError
        from pipeline.asr.engine import SegmentTooLong
        from pipeline.asr.store import DownloadError, ModelNotFound

        if isinstance(exc, (UnknownModel, CheckpointError, DownloadError, ModelNotFound, SegmentTooLong, ValueError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError):  # unwritable data dir, disk full, NATS timeouts, a --wait that ran out
            print(f"error: {f'{exc.filename}: {exc.strerror}' if exc.filename else exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
