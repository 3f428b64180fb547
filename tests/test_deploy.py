"""Operators' files: compose.yaml, Dockerfile, deploy/ (systemd units, nginx, install.sh, healthcheck).

Nothing here starts Docker, systemd or nginx for real. The files are parsed and checked against what
the services need (the settings names, paths, commands), and handed to the real validators where this
machine has them: `docker compose config`, `systemd-analyze verify`, `nginx -t`, `shellcheck`,
`nats-server -t`. Those skip, saying why, when the tool is missing. The health check runs against a
real nats-server.
"""

from __future__ import annotations

import asyncio
import configparser
import hashlib
import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml

from pipeline.natsserver import EmbeddedNats, find_server_binary
from pipeline.settings import Settings
from schemas.subjects import WORKER_PING_PREFIX

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
NGINX = DEPLOY / "nginx"
HEALTHCHECK = DEPLOY / "healthcheck.py"
INSTALL = DEPLOY / "install.sh"

SERVICES = ("api", "ingest", "decode", "infer", "format", "registry")  # `gigaam-transcriber serve NAME`
SETTINGS = {f"GIGAAM_{name.upper()}" for name in Settings.model_fields}


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


ENV = env_file(DEPLOY / "gigaam.env")


def covered(path: str, writable: list[str]) -> bool:
    """Is `path` at or below one of the ReadWritePaths= entries (a leading '-' only makes it optional)?"""
    return any(path == w.lstrip("-") or path.startswith(w.lstrip("-").rstrip("/") + "/") for w in writable)


# --------------------------------------------------------------------------- compose.yaml


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())  # resolves the anchors and `<<` merges


def mounts(service: dict) -> dict[str, str]:
    """target -> source of the service's volumes (short syntax)."""
    out = {}
    for entry in service.get("volumes", []):
        source, target, *_ = entry.split(":")
        out[target] = source
    return out


def test_compose_has_nats_with_jetstream_on_a_volume(compose: dict) -> None:
    nats = compose["services"]["nats"]
    argv = [*nats["entrypoint"], *nats["command"]]
    assert argv[0] == "nats-server"
    assert "-js" in argv or "--jetstream" in argv
    store = argv[argv.index("-sd") + 1]
    assert mounts(nats).get(store) in compose["volumes"], "the JetStream store must be a named volume"
    assert "healthcheck.py" in " ".join(nats["healthcheck"]["test"]) and " nats" in " ".join(nats["healthcheck"]["test"])
    assert "ports" not in nats, "the broker is for the other containers only"


def test_compose_runs_one_container_per_service_from_one_image(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"nats", *SERVICES}
    images = {(s["image"], str(s["build"])) for s in services.values()}
    assert len(images) == 1 and next(iter(images))[1] == ".", "every container comes from ./Dockerfile"
    for name in SERVICES:
        s = services[name]
        assert s["command"] == ["serve", name], name
        assert s["restart"] in ("unless-stopped", "always"), name
        assert s["environment"]["GIGAAM_NATS_URL"] == "nats://nats:4222", name
        assert s["depends_on"]["nats"] == {"condition": "service_healthy"}, name
        probe = s["healthcheck"]["test"]
        assert probe[:3] == ["CMD", "python", "/opt/gigaam/healthcheck.py"] and probe[3] == name, name
    assert services["nats"]["restart"] in ("unless-stopped", "always")


def test_compose_dependencies_wait_for_health_that_exists(compose: dict) -> None:
    services = compose["services"]
    for name, s in services.items():
        for dep, cond in s.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, which it never reports"
    for name in ("api", "ingest"):  # task lookups and submissions go through the registry
        assert services[name]["depends_on"]["registry"] == {"condition": "service_healthy"}


def test_compose_infer_reserves_a_gpu_with_three_jobs_in_flight(compose: dict) -> None:
    infer = compose["services"]["infer"]
    devices = infer["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert str(infer["environment"]["GIGAAM_INFER_CONCURRENCY"]) == "3"
    assert mounts(infer)[infer["environment"]["GIGAAM_MODEL_DIR"]] == "models"


def test_compose_volumes_back_the_configured_folders(compose: dict) -> None:
    services = compose["services"]
    assert {"nats", "data", "models", "inbox", "output"} <= set(compose["volumes"])
    for name in SERVICES:
        s = services[name]
        assert mounts(s).get(s["environment"]["GIGAAM_DATA_DIR"]) == "data", name
        for source in mounts(s).values():
            assert source in compose["volumes"], f"{name}: {source} is not a declared named volume"
    fmt = services["format"]
    assert mounts(fmt)[fmt["environment"]["GIGAAM_OUTPUT_DIR"]] == "output"
    ingest = services["ingest"]
    inbox = Path(ingest["environment"]["GIGAAM_INBOX_DIR"])
    # processed/ and failed/ go beside the inbox: its parent must be the volume, so moves stay renames
    assert mounts(ingest)[str(inbox.parent)] == "inbox"
    assert services["registry"]["environment"]["GIGAAM_DATA_DIR"] == "/data"


def test_compose_api_is_published_on_loopback_only(compose: dict) -> None:
    api = compose["services"]["api"]
    assert api["environment"]["GIGAAM_API_HOST"] == "0.0.0.0"  # inside its container
    assert all(p.startswith("127.0.0.1:") for p in api["ports"])
    assert [s for s, svc in compose["services"].items() if "ports" in svc] == ["api"]


def test_compose_and_env_file_set_only_real_settings(compose: dict) -> None:
    used = set(ENV)
    for s in compose["services"].values():
        used |= {k for k in s.get("environment", {}) if k.startswith("GIGAAM_")}
    unknown = used - SETTINGS
    assert not unknown, f"not settings (typos?): {sorted(unknown)}; see pipeline/settings.py"


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return [shutil.which("docker-compose")]
    return None


def test_compose_config_is_valid_for_docker(tmp_path: Path) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` (v2 plugin) nor `docker-compose` is installed")
    text = (ROOT / "compose.yaml").read_text()
    if cli[-1].endswith("docker-compose"):  # v1 predates the top-level `name`
        text = re.sub(r"(?m)^name: .*\n", "", text)
    path = tmp_path / "compose.yaml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIGAAM_", "COMPOSE_"))}
    result = subprocess.run(
        [*cli, "-f", str(path), "--project-directory", str(ROOT), "config", "-q"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr or result.stdout


# --------------------------------------------------------------------------- Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_builds_the_package_as_a_non_root_cli_image() -> None:
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    assert re.search(r"pip install (--no-deps )?\.( |$)", runs), "installs this package"
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [arg for op, arg in steps if op == "ENTRYPOINT"] == ['["gigaam-transcriber"]']
    assert ("COPY", "deploy/healthcheck.py /opt/gigaam/healthcheck.py") in steps  # what compose probes with
    assert "models pull" not in runs and ".ckpt" not in runs, "weights belong in the GIGAAM_MODEL_DIR volume"


def test_docker_context_holds_what_the_dockerfile_copies() -> None:
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    for op, arg in dockerfile():
        if op == "COPY":
            *sources, _ = arg.split()
            for src in sources:
                assert (ROOT / src).exists(), src
                assert src.rstrip("/") in allowed, f".dockerignore leaves out {src}"


def test_operator_files_name_no_package_index() -> None:
    files = [ROOT / "Dockerfile", ROOT / "compose.yaml", *[p for p in DEPLOY.rglob("*") if p.is_file()]]
    for path in files:
        text = path.read_text()
        assert not re.search(r"--(extra-)?index-url|--find-links|pypi\.org|pythonhosted", text), path


# --------------------------------------------------------------------------- systemd units


def unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=True, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string(path.read_text(), source=str(path))
    return parser


UNIT_FILES = sorted(UNITS.glob("gigaam-*.service"))
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes"}


def test_one_unit_per_service_plus_nats_and_a_target() -> None:
    names = {p.stem.removeprefix("gigaam-") for p in UNIT_FILES}
    assert names == {"nats", *SERVICES}
    assert (UNITS / "gigaam.target").is_file()


@pytest.mark.parametrize("path", UNIT_FILES, ids=lambda p: p.name)
def test_unit_is_hardened_and_restarts(path: Path) -> None:
    u = unit(path)
    svc = u["Service"]
    assert svc["User"] == "gigaam" and svc["Group"] == "gigaam"
    for key, value in HARDENING.items():
        assert svc.get(key) == value, f"{path.name}: {key}={svc.get(key)}"
    assert svc["Restart"] == "on-failure"
    assert svc["CapabilityBoundingSet"] == ""
    assert svc["ReadWritePaths"].split(), "ProtectSystem=strict without ReadWritePaths= cannot write anywhere"
    # /dev/nvidia* must stay visible to the model, and only to it
    assert svc.get("PrivateDevices") == (None if path.stem == "gigaam-infer" else "yes"), path.name
    assert u["Unit"]["PartOf"] == "gigaam.target"
    assert u["Install"]["WantedBy"] == "gigaam.target"


@pytest.mark.parametrize("name", SERVICES)
def test_service_unit_runs_serve_with_the_environment_file(name: str) -> None:
    svc = unit(UNITS / f"gigaam-{name}.service")["Service"]
    assert svc["ExecStart"] == f"/opt/gigaam/venv/bin/gigaam-transcriber serve {name}"
    assert svc["EnvironmentFile"] == "/etc/gigaam/gigaam.env"
    writable = svc["ReadWritePaths"].split()
    assert covered(ENV["GIGAAM_DATA_DIR"], writable), "scratch space and databases live in the data dir"
    if name == "format":
        assert covered(ENV["GIGAAM_OUTPUT_DIR"], writable)
    if name == "ingest":  # moves files into processed/ and failed/ beside the inbox
        assert covered(str(Path(ENV["GIGAAM_INBOX_DIR"]).parent), writable)
    if name == "infer":  # downloads the model when it is missing
        assert covered(ENV["GIGAAM_MODEL_DIR"], writable)


def test_nats_unit_runs_jetstream_in_a_writable_store() -> None:
    svc = unit(UNITS / "gigaam-nats.service")["Service"]
    assert svc["ExecStart"] == "/opt/gigaam/venv/bin/nats-server -c /etc/gigaam/nats.conf"
    conf = (DEPLOY / "nats" / "nats.conf").read_text()
    store = re.search(r"(?m)^\s*store_dir:\s*(\S+)", conf).group(1)
    assert covered(store, svc["ReadWritePaths"].split())
    listen = re.search(r"(?m)^listen:\s*(\S+)", conf).group(1)
    assert ENV["GIGAAM_NATS_URL"] == f"nats://{listen}"
    monitor = re.search(r"(?m)^http:\s*(\S+)", conf).group(1)
    assert f"nats --monitor http://{monitor} " in svc["ExecStartPost"], "readiness probe asks the port nats.conf opens"


def test_nats_config_is_accepted_by_nats_server() -> None:
    result = subprocess.run([find_server_binary(), "-c", str(DEPLOY / "nats" / "nats.conf"), "-t"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout


def test_target_starts_units_in_order() -> None:
    after = {p.stem.removeprefix("gigaam-"): unit(p)["Unit"]["After"].split() for p in UNIT_FILES}

    def before(a: str, b: str) -> bool:  # is a ordered before b, directly or through others
        todo, seen = [b], set()
        while todo:
            cur = todo.pop()
            deps = [d.removeprefix("gigaam-").removesuffix(".service") for d in after.get(cur, [])]
            if a in deps:
                return True
            todo += [d for d in deps if d not in seen and not seen.add(d)]
        return False

    for worker in ("decode", "infer", "format"):
        assert before("nats", worker) and before("registry", worker)
    for front in ("api", "ingest"):
        assert all(before(w, front) for w in ("nats", "registry", "decode", "infer", "format"))
    assert before("nats", "registry") and not before("registry", "nats")
    target = unit(UNITS / "gigaam.target")
    assert set(target["Unit"]["After"].split()) == {p.name for p in UNIT_FILES}
    assert target["Install"]["WantedBy"] == "multi-user.target"


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    # verify insists that executables exist: point /opt/gigaam/venv/bin at this interpreter's bin dir,
    # which holds gigaam-transcriber, nats-server and python too.
    bindir = Path(sys.executable).parent
    for name in ("gigaam-transcriber", "nats-server", "python"):
        if not (bindir / name).exists():
            pytest.skip(f"{bindir} has no {name} to stand in for /opt/gigaam/venv/bin/{name}")
    files = []
    for path in [*UNIT_FILES, UNITS / "gigaam.target"]:
        copy = tmp_path / path.name
        copy.write_text(path.read_text().replace("/opt/gigaam/venv/bin/", f"{bindir}/"))
        files.append(str(copy))
    result = subprocess.run([tool, "verify", "--man=no", *files], capture_output=True, text=True, cwd=tmp_path)
    # Unknown keys and bad values are only warnings (exit 0): any line about our files is a failure.
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "gigaam" in line]
    assert result.returncode == 0 and not ours, "\n".join(ours) or result.stderr


# --------------------------------------------------------------------------- nginx


def nginx_text(name: str) -> str:
    return (NGINX / name).read_text()


def test_nginx_proxy_rules_suit_uploads_and_progress_streams() -> None:
    proxy = nginx_text("gigaam-proxy.conf")
    for directive in ("client_max_body_size 2100m;", "proxy_request_buffering off;", "proxy_read_timeout 3700s;"):
        assert directive in proxy
    sse = re.search(r"location ~ \^/api/v1/tasks/\[\^/\]\+/events\$ \{(.*?)\}", proxy, re.S)
    assert sse and "proxy_buffering off;" in sse.group(1) and "proxy_pass http://gigaam_api;" in sse.group(1)
    assert re.search(r"location / \{\s*proxy_pass http://gigaam_api;", proxy)
    metrics = re.search(r"location = /metrics \{(.*?)\}", proxy, re.S)
    assert metrics and "deny all;" in metrics.group(1) and "allow 127.0.0.1;" in metrics.group(1)
    assert metrics.group(1).index("allow 127.0.0.1;") < metrics.group(1).index("deny all;")  # first match wins
    assert re.match(r"^/api/v1/tasks/[^/]+/events$", "/api/v1/tasks/0f9c2a/events")


@pytest.mark.parametrize("name", ["gigaam.conf", "gigaam-http.conf"])
def test_nginx_sites_proxy_to_the_api_and_answer_acme(name: str) -> None:
    site = nginx_text(name)
    assert f"server 127.0.0.1:{ENV['GIGAAM_API_PORT']};" in site
    assert "include /etc/nginx/snippets/gigaam-proxy.conf;" in site
    assert "location ^~ /.well-known/acme-challenge/" in site and "root /var/www/certbot;" in site


def test_nginx_tls_site_redirects_http_and_uses_lets_encrypt() -> None:
    site = nginx_text("gigaam.conf")
    assert re.search(r"return 30[18] https://\$host\$request_uri;", site)
    assert "listen 443 ssl" in site
    assert "ssl_certificate     /etc/letsencrypt/live/__DOMAIN__/fullchain.pem;" in site
    assert "ssl_certificate_key /etc/letsencrypt/live/__DOMAIN__/privkey.pem;" in site


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ipv6_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed for a throwaway certificate)")
    folder = tmp_path_factory.mktemp("cert")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=asr.example.com",
         "-keyout", str(folder / "privkey.pem"), "-out", str(folder / "fullchain.pem")],
        check=True, capture_output=True,
    )
    return folder


@pytest.mark.parametrize("name", ["gigaam.conf", "gigaam-http.conf"])
def test_nginx_accepts_the_site(name: str, tmp_path: Path, self_signed: Path) -> None:
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if nginx is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    # The site as install.sh renders it, with the certificate and snippet paths moved into tmp_path,
    # inside a minimal nginx.conf whose every writable path is in tmp_path: no root needed.
    # `nginx -t` binds the listeners too: ports 80 and 443 become free high ports (no root, no clash
    # with a running nginx), and the IPv6 ones go where the machine has no IPv6.
    (tmp_path / "gigaam-proxy.conf").write_text(nginx_text("gigaam-proxy.conf"))
    site = (
        nginx_text(name)
        .replace("/etc/letsencrypt/live/__DOMAIN__/", f"{self_signed}/")
        .replace("/etc/nginx/snippets/", f"{tmp_path}/")
        .replace("__DOMAIN__", "asr.example.com")
    )
    ports = {"80": str(free_port()), "443": str(free_port())}
    site = re.sub(r"(listen (?:\[::\]:)?)(80|443)\b", lambda m: m.group(1) + ports[m.group(2)], site)
    if not ipv6_works():
        site = re.sub(r"(?m)^\s*listen \[::\]:.*\n", "", site)
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\nhttp {{\n"
        f"  access_log off;\n"
        + "".join(f"  {kind}_temp_path {tmp_path}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        + f"  include {tmp_path}/site.conf;\n}}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- install.sh


@pytest.mark.parametrize("script", [INSTALL, ROOT / ".ci" / "run"], ids=lambda p: p.name)
def test_shell_script_syntax(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_install_script_passes_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run(["shellcheck", "-S", "style", str(INSTALL)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=60)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its type, permission bits and content hash (or link target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir", oct(path.stat().st_mode & 0o7777))
        else:
            out[rel] = ("file", oct(path.stat().st_mode & 0o7777), hashlib.sha256(path.read_bytes()).hexdigest())
    return out


TLS_ARGS = ("--domain", "asr.example.com", "--email", "ops@example.com")


def test_install_prefix_twice_gives_the_same_tree(tmp_path: Path) -> None:
    first = install("--prefix", str(tmp_path), *TLS_ARGS)
    assert first.returncode == 0, first.stderr
    tree = snapshot(tmp_path)
    second = install("--prefix", str(tmp_path), *TLS_ARGS)
    assert second.returncode == 0, second.stderr
    assert snapshot(tmp_path) == tree
    wrote = [line for line in second.stdout.splitlines() if line.startswith(("installed", "created", "linked"))]
    assert not wrote, f"second run changed files: {wrote}"
    assert "would run: systemctl daemon-reload" not in second.stdout  # units unchanged: no reload


def test_install_prefix_lays_out_the_server(tmp_path: Path) -> None:
    result = install("--prefix", str(tmp_path), *TLS_ARGS)
    assert result.returncode == 0, result.stderr
    for path in [*UNIT_FILES, UNITS / "gigaam.target"]:
        assert (tmp_path / "etc/systemd/system" / path.name).read_text() == path.read_text()
    assert (tmp_path / "opt/gigaam/healthcheck.py").read_bytes() == HEALTHCHECK.read_bytes()
    assert (tmp_path / "etc/gigaam/nats.conf").read_text() == (DEPLOY / "nats/nats.conf").read_text()
    env = env_file(tmp_path / "etc/gigaam/gigaam.env")
    assert env["GIGAAM_API_PUBLIC_URL"] == "https://asr.example.com"
    assert oct((tmp_path / "etc/gigaam/gigaam.env").stat().st_mode & 0o777) == "0o640"  # API settings: not world-readable
    site = (tmp_path / "etc/nginx/sites-available/gigaam").read_text()
    assert "server_name asr.example.com;" in site and "/etc/letsencrypt/live/asr.example.com/" in site
    assert "__DOMAIN__" not in site
    assert os.readlink(tmp_path / "etc/nginx/sites-enabled/gigaam") == "/etc/nginx/sites-available/gigaam"
    for folder in ("var/lib/gigaam/nats", "var/cache/gigaam/models", "srv/gigaam/inbox", "srv/gigaam/output",
                   "srv/gigaam/processed", "srv/gigaam/failed"):
        assert (tmp_path / folder).is_dir(), folder
    # everything that touches the machine is announced, none of it run
    out = result.stdout
    for command in ("useradd --system", "systemctl enable --quiet gigaam.target", "systemctl restart gigaam.target",
                    "certbot certonly --webroot", "nginx -t", "keys create admin", "models pull v3_e2e_rnnt"):
        assert any(line.startswith("would run: ") and command in line for line in out.splitlines()), command
    assert "+ " not in result.stderr


def test_install_keeps_the_operators_settings(tmp_path: Path) -> None:
    assert install("--prefix", str(tmp_path), "--no-model").returncode == 0
    env_path = tmp_path / "etc/gigaam/gigaam.env"
    env_path.write_text(env_path.read_text() + "GIGAAM_INFER_BATCH_SIZE=32\n")
    again = install("--prefix", str(tmp_path), "--no-model")
    assert again.returncode == 0
    assert env_path.read_text().endswith("GIGAAM_INFER_BATCH_SIZE=32\n")
    assert "kept /etc/gigaam/gigaam.env" in again.stdout


def test_install_without_domain_skips_nginx(tmp_path: Path) -> None:
    result = install("--prefix", str(tmp_path), "--no-model")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "etc/nginx").exists()
    assert env_file(tmp_path / "etc/gigaam/gigaam.env")["GIGAAM_API_PUBLIC_URL"] == ""
    assert "certbot" not in result.stdout


def test_install_worker_host_runs_only_its_services(tmp_path: Path) -> None:
    result = install("--prefix", str(tmp_path), "--services", "infer", "--nats-url", "nats://10.0.0.1:4222")
    assert result.returncode == 0, result.stderr
    assert env_file(tmp_path / "etc/gigaam/gigaam.env")["GIGAAM_NATS_URL"] == "nats://10.0.0.1:4222"
    assert "systemctl enable --quiet gigaam.target gigaam-infer.service\n" in result.stdout
    assert "systemctl disable --now --quiet gigaam-nats.service gigaam-registry.service" in result.stdout
    assert "keys create" not in result.stdout and "nginx" not in result.stdout
    assert "healthcheck.py nats --url nats://10.0.0.1:4222" in result.stdout


def test_install_dry_run_writes_nothing(tmp_path: Path) -> None:
    result = install("--prefix", str(tmp_path / "root"), "--dry-run", *TLS_ARGS)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "root").exists()
    assert "would install /etc/systemd/system/gigaam-api.service" in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (("--domain", "asr.example.com"), "needs --email"),
        (("--services", "infer,gpu"), "unknown service gpu"),
        (("--services", "infer", "--domain", "asr.example.com", "--no-tls"), "does not run it"),
        (("--domain", "bad name;rm", "--no-tls"), "not a host name"),
        (("--frobnicate",), "unknown option"),
    ],
)
def test_install_refuses_bad_arguments(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    result = install("--prefix", str(tmp_path), *args)
    assert result.returncode != 0 and message in result.stderr


def test_install_needs_root_for_the_real_thing() -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: the refusal is for unprivileged users")
    result = install("--no-model")
    assert result.returncode != 0 and "run as root" in result.stderr


# --------------------------------------------------------------------------- healthcheck.py


def test_healthcheck_pings_the_subjects_the_services_answer() -> None:
    text = HEALTHCHECK.read_text()
    assert f'PING_PREFIX = "{WORKER_PING_PREFIX}"' in text
    assert "from pipeline" not in text and "import pipeline" not in text  # stdlib + nats-py only


async def healthcheck(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Runs the script as a process, while this event loop keeps serving any responder of the test."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HEALTHCHECK), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("GIGAAM_")}, **(env or {})},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode()


async def test_healthcheck_nats(nats_server: EmbeddedNats) -> None:
    code, out = await healthcheck("nats", env={"GIGAAM_NATS_URL": nats_server.url})
    assert code == 0 and "JetStream up" in out, out
    dead = f"nats://127.0.0.1:{free_port()}"  # nobody listens there
    code, out = await healthcheck("nats", "--url", dead, "--timeout", "1")
    assert code == 1 and "cannot connect" in out, out


async def test_healthcheck_nats_monitoring_port(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "nats", monitor_port=0) as server:
        code, out = await healthcheck("nats", "--monitor", server.monitor_url)
        assert code == 0 and "/healthz: 200" in out, out
    code, out = await healthcheck("nats", "--monitor", server.monitor_url, "--timeout", "1")
    assert code == 1, out


async def test_healthcheck_keeps_passwords_out_of_messages() -> None:
    code, out = await healthcheck("nats", "--url", f"nats://gigaam:s3cret@127.0.0.1:{free_port()}", "--timeout", "1")
    assert code == 1 and "gigaam:***@127.0.0.1" in out and "s3cret" not in out, out


async def test_healthcheck_nats_without_jetstream(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([find_server_binary(), "-a", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        code, out = await healthcheck("nats", "--url", f"nats://127.0.0.1:{port}", "--timeout", "1")
    finally:
        proc.terminate()
        proc.wait(10)
    assert code == 1 and "JetStream does not" in out, out


async def test_healthcheck_worker_ping(nats_server: EmbeddedNats) -> None:
    import nats

    nc = await nats.connect(nats_server.url)
    replies = {"host": socket.gethostname()}

    async def respond(msg) -> None:  # noqa: ANN001 - what every service's ping responder does
        await msg.respond(orjson.dumps({"service": "decode", "pid": 4242, "uptime": 1.0, **replies}))

    env = {"GIGAAM_NATS_URL": nats_server.url}
    try:
        code, out = await healthcheck("decode", "--timeout", "2", env=env)
        assert code == 1 and "no decode worker answered" in out, out

        await nc.subscribe(f"{WORKER_PING_PREFIX}.decode", cb=respond)
        await nc.flush()
        code, out = await healthcheck("decode", env=env)
        assert code == 0 and "pid 4242" in out, out

        replies["host"] = "another-host"  # a scaled-out sibling answers, this host's worker is gone
        code, out = await healthcheck("decode", "--timeout", "1", env=env)
        assert code == 1 and "only on: another-host" in out, out
        code, out = await healthcheck("decode", "--any-host", env=env)
        assert code == 0, out

        replies.update(host=socket.gethostname(), ready=False)  # infer while its model loads
        code, out = await healthcheck("decode", "--timeout", "1", env=env)
        assert code == 1 and "not ready" in out, out
        replies["ready"] = True
        code, out = await healthcheck("decode", "-q", env=env)
        assert code == 0 and out == "", out

        code, out = await healthcheck("infer", "--timeout", "1", env=env)  # another stage: nobody
        assert code == 1, out
    finally:
        await nc.close()


@pytest.fixture
def http_health() -> Iterator[tuple[int, dict]]:
    state = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response({"/health": state["status"], "/": 200}.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], state
    server.shutdown()
    server.server_close()


async def test_healthcheck_api(http_health: tuple[int, dict]) -> None:
    port, state = http_health
    env = {"GIGAAM_API_HOST": "0.0.0.0", "GIGAAM_API_PORT": str(port)}  # 0.0.0.0: probe loopback
    code, out = await healthcheck("api", env=env)
    assert code == 0 and f"http://127.0.0.1:{port}/health: 200" in out, out
    state["status"] = 503  # the API runs, a stage is missing
    code, out = await healthcheck("api", env=env)
    assert code == 1 and "HTTP 503" in out, out
    code, out = await healthcheck("api", "--path", "/", env=env)  # compose's liveness probe
    assert code == 0, out
