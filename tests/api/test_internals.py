"""The gate around BentoML and uvicorn internals (api/internals.py): off on any other version, a
missing name or ATTRITION_FAST_PATH=off, with nothing patched; and the only module naming them."""

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn.config
from bentoml._internal.server.http import instruments
from fastapi import FastAPI

from api import internals
from settings import Settings

PROJECT_DIR = Path(__file__).resolve().parents[2]
# bentoml._internal, _bentoml_impl, _bentoml_sdk, uvicorn.protocols (not test_internals.py).
PRIVATE = re.compile(r"(?<!\w)(_internal\b|_bentoml_impl|_bentoml_sdk)|uvicorn\.protocols")


@pytest.fixture()
def pristine(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, str], type[Any]]]:
    """uvicorn's protocol table and BentoML's metrics middleware as they were, restored after."""
    protocols = dict(uvicorn.config.HTTP_PROTOCOLS)
    middleware = instruments.RunnerTrafficMetricsMiddleware
    monkeypatch.setattr(uvicorn.config, "HTTP_PROTOCOLS", dict(protocols))
    monkeypatch.setattr(instruments, "RunnerTrafficMetricsMiddleware", middleware)
    monkeypatch.setattr(internals, "_gate", internals.INACTIVE)
    yield protocols, middleware


def settings(**extra: Any) -> Settings:
    return Settings(dev_mode=True, **extra)


def assert_untouched(pristine: tuple[dict[str, str], type[Any]]) -> None:
    protocols, middleware = pristine
    assert uvicorn.config.HTTP_PROTOCOLS == protocols
    assert instruments.RunnerTrafficMetricsMiddleware is middleware


def test_another_version_turns_the_gate_off_and_installs_nothing(
    pristine: tuple[dict[str, str], type[Any]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    found = {**internals.WRITTEN_FOR, "bentoml": "1.4.41"}
    monkeypatch.setattr(internals, "installed_versions", lambda: found)
    gate = internals.install(settings(), FastAPI())
    assert not gate.active and "bentoml 1.4.41 (written for 1.4.40)" in gate.reason
    assert internals.gate() == gate
    assert_untouched(pristine)
    assert "attrition_internals_active 0\n" in internals.active_gauge()
    assert any(r.levelname == "WARNING" and gate.reason in r.message for r in caplog.records)
    with pytest.raises(RuntimeError, match="internals are off"):
        internals.protocol_base()


def test_a_missing_name_turns_the_gate_off(
    pristine: tuple[dict[str, str], type[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(instruments.RunnerTrafficMetricsMiddleware, "_setup")
    gate = internals.install(settings(), FastAPI())
    assert not gate.active
    assert gate.reason == (
        "missing internals: "
        "bentoml._internal.server.http.instruments.RunnerTrafficMetricsMiddleware._setup"
    )
    assert_untouched(pristine)


def test_the_setting_turns_the_gate_off(pristine: tuple[dict[str, str], type[Any]]) -> None:
    gate = internals.install(settings(fast_path="off"), FastAPI())
    assert gate == internals.Gate(False, "ATTRITION_FAST_PATH=off")
    assert gate.as_dict() == {"active": False, "reason": "ATTRITION_FAST_PATH=off"}
    assert_untouched(pristine)


def test_the_versions_it_was_written_for_install_the_patches(
    pristine: tuple[dict[str, str], type[Any]],
) -> None:
    gate = internals.install(settings(http_max_header_bytes=8192), FastAPI())
    assert gate.active, gate.reason
    from api.protocol import LimitedHttpToolsProtocol
    from api.route_metrics import RouteLabelledMetrics

    assert uvicorn.config.HTTP_PROTOCOLS["auto"] == "api.protocol:LimitedHttpToolsProtocol"
    assert instruments.RunnerTrafficMetricsMiddleware is RouteLabelledMetrics
    assert LimitedHttpToolsProtocol.max_header_bytes == 8192
    assert "attrition_internals_active 1\n" in internals.active_gauge()


def test_the_installed_versions_are_the_ones_it_was_written_for() -> None:
    """An upgrade fails here first: re-check the internals, then move WRITTEN_FOR."""
    assert internals.installed_versions() == internals.WRITTEN_FOR
    assert internals.missing_names() == []


def test_no_other_module_names_a_private_bentoml_or_uvicorn_name() -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_DIR, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    offenders = []
    for name in files:
        path = PROJECT_DIR / name
        if name.startswith(("tests/", ".venv/", "build/")) or name == "api/internals.py":
            continue
        if path.suffix not in (".py", ".yaml", ".yml", ".toml", ".cfg") or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if PRIVATE.search(line):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert offenders == []


@pytest.fixture()
def container() -> Iterator[Any]:
    """BentoML's configuration container, its tracing, CORS and services restored after."""
    from bentoml._internal.container import BentoMLContainer

    exporter = BentoMLContainer.tracing.exporter_type.get()
    cors = BentoMLContainer.http.cors.enabled.get()
    try:
        services = BentoMLContainer.config.services.get()
    except KeyError:
        services = None
    yield BentoMLContainer
    BentoMLContainer.tracing.exporter_type.set(exporter)
    BentoMLContainer.http.cors.enabled.set(cors)
    BentoMLContainer.config.services.set({} if services is None else services)


def test_no_bentoml_option_the_fast_path_would_skip_is_on_by_default(container: Any) -> None:
    assert internals.bypassed_options("AttritionService") == []


def test_tracing_keeps_the_fast_path_off(container: Any) -> None:
    container.tracing.exporter_type.set("zipkin")
    assert internals.bypassed_options("AttritionService") == ["tracing (zipkin)"]


def test_cors_keeps_the_fast_path_off(container: Any) -> None:
    container.http.cors.enabled.set(True)
    assert internals.bypassed_options("AttritionService") == ["http.cors"]


def test_max_concurrency_keeps_the_fast_path_off(container: Any) -> None:
    container.config.services.set({"AttritionService": {"traffic": {"max_concurrency": 8}}})
    assert internals.bypassed_options("AttritionService") == ["traffic.max_concurrency"]
    assert internals.bypassed_options("AttritionModel") == []
