"""The hashed locks in requirements/ (docs/adr/0001-lock-file.md) agree with pyproject.toml, with
each other, with the venv the tests run in, and with what the Bento and the images install. Edit
pyproject.toml without `make lock` and one of these fails."""

import importlib.metadata
import re
import shlex
import subprocess
import tomllib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from tests.helpers import PROJECT_DIR

REQUIREMENTS = PROJECT_DIR / "requirements"
FULL, RUNTIME, MONITORING = "lock.txt", "runtime.txt", "monitoring.txt"
# Which extras of pyproject.toml each lock holds: the venv's (make install), the Bento's, the
# monitoring image's.
EXTRAS = {FULL: ("dev", "monitoring"), RUNTIME: (), MONITORING: ("monitoring",)}
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: frozenset[str]


def parse_lock(text: str) -> dict[NormalizedName, Pin]:
    """`name==version --hash=... --hash=...` entries; anything else (an unpinned or unhashed
    requirement, an option line, a URL) fails the parse."""
    pins: dict[NormalizedName, Pin] = {}
    joined = re.sub(r"\\\n", " ", text)
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        match = PIN.fullmatch(words[0])
        assert match, f"not a name==version pin: {line!r}"
        hashes = [w.removeprefix("--hash=") for w in words[1:] if w.startswith("--hash=sha256:")]
        assert hashes and len(hashes) == len(words) - 1, f"not only hashes after a pin: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"{name} twice"
        pins[name] = Pin(match[2], frozenset(hashes))
    return pins


def lock(name: str) -> dict[NormalizedName, Pin]:
    return parse_lock((REQUIREMENTS / name).read_text())


def project() -> dict:
    return tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]


def roots(extras: tuple[str, ...]) -> list[Requirement]:
    spec = project()
    lines = list(spec["dependencies"])
    for extra in extras:
        lines += spec["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def closure(extras: tuple[str, ...]) -> dict[NormalizedName, list[tuple[Requirement, str]]]:
    """Every distribution pyproject.toml's requirements (with these extras) reach on this platform
    (Linux x86_64, CPython 3.11, the lock's), following the installed packages' own metadata;
    each with the requirements that reach it and who asks for them."""
    env = default_environment()
    reached: dict[NormalizedName, list[tuple[Requirement, str]]] = {}
    queue = deque((req, "pyproject.toml") for req in roots(extras))
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    while queue:
        req, by = queue.popleft()
        name = canonicalize_name(req.name)
        reached.setdefault(name, []).append((req, by))
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        try:
            requires = importlib.metadata.requires(req.name) or []
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{req.name} (required by {by}) is not installed: run make install")
        for line in requires:
            dep = Requirement(line)
            if dep.marker is None or any(
                dep.marker.evaluate({**env, "extra": extra}) for extra in {"", *req.extras}
            ):
                queue.append((dep, req.name))
    return reached


@pytest.mark.parametrize("name", EXTRAS)
def test_every_entry_is_pinned_with_hashes(name: str) -> None:
    pins = lock(name)
    assert pins, f"{name} is empty"
    assert all(pin.hashes for pin in pins.values())


def test_the_parser_refuses_what_hash_checking_would() -> None:
    assert parse_lock("a==1 \\\n    --hash=sha256:ab\n    # via b\n") == {
        "a": Pin("1", frozenset({"sha256:ab"}))
    }
    for bad in (
        "a==1\n",
        "a>=1 --hash=sha256:ab\n",
        "-e .\n",
        "a==1 --hash=sha256:ab\na==1 --hash=sha256:ab\n",
    ):
        with pytest.raises(AssertionError):
            parse_lock(bad)


@pytest.mark.parametrize("name", EXTRAS)
def test_every_direct_dependency_is_locked_at_a_version_pyproject_allows(name: str) -> None:
    pins = lock(name)
    for req in roots(EXTRAS[name]):
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req} is not in {name}: run make lock"
        assert req.specifier.contains(Version(pin.version), prereleases=True), (
            f"{name} has {req.name}=={pin.version}, pyproject.toml wants {req}: run make lock"
        )


@pytest.mark.parametrize("name", EXTRAS)
def test_each_lock_holds_exactly_what_its_requirements_reach(name: str) -> None:
    """Complete (every transitive requirement, extras included, at an allowed version) and
    nothing stale (a dependency dropped from pyproject.toml leaves the lock with `make lock`)."""
    pins = lock(name)
    reached = closure(EXTRAS[name])
    missing = sorted(set(reached) - set(pins))
    assert not missing, f"{name} lacks {missing}: run make lock"
    stale = sorted(set(pins) - set(reached))
    assert not stale, f"{name} has {stale}, which nothing requires: run make lock"
    for dist, wanted_by in reached.items():
        version = Version(pins[dist].version)
        for req, by in wanted_by:
            assert req.specifier.contains(version, prereleases=True), (
                f"{name} has {dist}=={version}, {by} wants {req}: run make lock"
            )


@pytest.mark.parametrize("name", [RUNTIME, MONITORING])
def test_the_narrower_locks_agree_with_the_full_one(name: str) -> None:
    full = lock(FULL)
    differ = {dist: pin.version for dist, pin in lock(name).items() if full.get(dist) != pin}
    assert not differ, f"{name} differs from {FULL} in {differ}: run make lock"


def test_the_monitoring_lock_keeps_every_runtime_pin() -> None:
    """The monitoring image installs it into the service image's venv: it must change nothing."""
    monitoring = lock(MONITORING)
    assert all(monitoring.get(dist) == pin for dist, pin in lock(RUNTIME).items())


def test_the_venv_runs_the_locked_versions() -> None:
    """What the tests (and CI) ran on is what the lock, the Bento and the image install."""
    pins = lock(FULL)
    for dist in ("bentoml", "uvicorn", "starlette"):
        assert dist in pins, dist
    installed = {dist: importlib.metadata.version(dist) for dist in pins}
    differ = {
        dist: f"installed {installed[dist]}, locked {pin.version}"
        for dist, pin in pins.items()
        if Version(installed[dist]) != Version(pin.version)
    }
    assert not differ, f"{differ}: run make install"


def test_the_bento_installs_the_runtime_lock(tmp_path: Path) -> None:
    """BentoML's own copy of the requirements (env/python/requirements.txt in the Bento), through
    the filter of the image's Dockerfile, is exactly the runtime lock."""
    from bentoml._internal.bento.build_config import PythonOptions

    python = yaml.safe_load((PROJECT_DIR / "bentofile.yaml").read_text())["python"]
    assert python == {"requirements_txt": "requirements/runtime.txt", "lock_packages": False}
    PythonOptions(**python).with_defaults().write_to_bento(tmp_path, str(PROJECT_DIR))
    written = tmp_path / "env" / "python" / "requirements.txt"

    dockerfile = (PROJECT_DIR / "deploy" / "image" / "Dockerfile.j2").read_text()
    filter_ = re.search(
        r"sed '([^']+)' env/python/requirements.txt >/tmp/requirements.txt", dockerfile
    )
    assert filter_, "Dockerfile.j2 no longer filters the Bento's requirements"
    assert re.search(
        r"uv pip install [^;]*--require-hashes[^;]*-r /tmp/requirements.txt", dockerfile
    )
    filtered = subprocess.run(
        ["sed", filter_[1], str(written)], capture_output=True, text=True, check=True
    ).stdout
    assert parse_lock(filtered) == lock(RUNTIME)
    # What the filter drops is BentoML's own pin, which the lock holds, hashed.
    dropped = set(written.read_text().splitlines()) - set(filtered.splitlines())
    assert dropped == {f"bentoml=={lock(RUNTIME)['bentoml'].version}"}


def test_the_monitoring_image_installs_the_monitoring_lock() -> None:
    build = (PROJECT_DIR / "deploy" / "image" / "build.sh").read_text()
    assert (
        "cp requirements/monitoring.txt build/monitoring-image/monitoring-requirements.txt" in build
    )
    containerfile = (PROJECT_DIR / "deploy" / "image" / "monitoring.Containerfile").read_text()
    assert re.search(
        r"uv pip install [^;]*--require-hashes[^;]*monitoring-requirements.txt", containerfile
    )


def make(*args: str) -> str:
    return subprocess.run(
        ["make", *args], cwd=PROJECT_DIR, capture_output=True, text=True, check=False
    ).stdout


def test_make_install_installs_the_lock_and_is_redone_when_it_changes() -> None:
    out = make("--dry-run", "--always-make", ".venv/.installed")
    assert "pip install --quiet --require-hashes -r requirements/lock.txt" in out
    assert "pip install --quiet --no-deps -e ." in out
    prerequisites = re.search(
        r"^\.venv/\.installed: (.*)$", make("--print-data-base", "-q", "help"), re.M
    )
    assert prerequisites and "requirements/lock.txt" in prerequisites[1].split()
