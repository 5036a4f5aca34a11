"""The harness that starts every real server in the suite and the benchmarks: a port taken
between its probe and the server's bind must not fail the run."""

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import harness
from tests.conftest import SERVER_ENV

pytestmark = pytest.mark.integration


def test_probed_ports_are_free_and_never_ones_the_kernel_gives_to_clients() -> None:
    ephemeral = harness.ephemeral_ports()
    ports = {harness.free_port() for _ in range(50)}
    assert not [p for p in ports if p in ephemeral]
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_server_whose_port_is_taken_starts_again_on_another(
    model_tag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", harness.free_port()))
    squatter.listen()
    taken = squatter.getsockname()[1]
    probe = harness.free_port

    def taken_first() -> Iterator[int]:
        yield taken
        while True:
            yield probe()

    ports = taken_first()
    monkeypatch.setattr(harness, "free_port", lambda: next(ports))
    env = {**SERVER_ENV, "ATTRITION_MODEL_TAG": model_tag, "ATTRITION_DATA_DIR": str(tmp_path)}
    log = tmp_path / "noop.log"
    try:
        server = harness.Server("loadtests.noop_service:NoopService", env, log=log)
        try:
            assert server.port != taken
            assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
        finally:
            server.stop()
    finally:
        squatter.close()
    # The first attempt really did fail on the taken port, and its log was kept.
    assert f"Could not bind 127.0.0.1:{taken}" in log.read_text(errors="replace")
