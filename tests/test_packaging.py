"""Every third-party module the runtime code imports is a runtime dependency, not just a test extra:
`pip install .` (the Dockerfile, deploy/install.sh) must give a working service."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_PACKAGES = ("pipeline", "services", "schemas")


def _imported_top_level_modules() -> set[str]:
    found: set[str] = set()
    for package in RUNTIME_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - set(RUNTIME_PACKAGES)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_runtime_imports_are_declared_runtime_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_normalise(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]) for spec in project["dependencies"]}
    providers = packages_distributions()
    modules = _imported_top_level_modules()
    assert {"torch", "nats", "sanic", "httpx"} <= modules  # the scan sees the code
    missing = {
        module: providers.get(module, ["?"])
        for module in modules
        if not any(_normalise(dist) in declared for dist in providers.get(module, []))
    }
    assert not missing, f"imported at runtime but not in [project].dependencies: {missing}"


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and re.fullmatch(r"[0-9][0-9A-Za-z.+!]*", version), f"not an exact pin: {line!r}"
        pins[_normalise(name)] = version
    return pins


def test_every_dependency_is_pinned_to_an_exact_version() -> None:
    """`make install` installs with -c constraints.txt: whatever the registry publishes tomorrow, a
    fresh machine gets the tree the suite passed with. Extras (test, bench, client) are pinned too."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [s for extra in project["optional-dependencies"].values() for s in extra]
    names = {_normalise(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]) for spec in specs}
    names.discard("gigaam-transcriber")  # an extra that names the project's own other extras
    pins = _pins()
    assert not names - pins.keys(), f"declared but not pinned in constraints.txt: {sorted(names - pins.keys())}"
    assert pins["torch"].split("+")[0] == pins["torchaudio"].split("+")[0], "torch and torchaudio must be one pair"


def test_constraints_name_no_download_address() -> None:
    text = (ROOT / "constraints.txt").read_text()
    assert not re.search(r"://|@|--(extra-)?index-url|--find-links|\.whl|\.tar\.gz", text)
