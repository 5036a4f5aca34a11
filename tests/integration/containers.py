"""podman for the container tests: the host set up by deploy/image/podman.sh, and the images."""

import os
import subprocess
import time
from pathlib import Path

from tests.helpers import PROJECT_DIR

IMAGE_DIR = PROJECT_DIR / "deploy" / "image"
PODMAN_ENV = {**os.environ, "CONTAINERS_CONF": str(PROJECT_DIR / "build" / "containers.conf")}


def podman(*args: str, timeout: float = 300, input: str | None = None, check: bool = True) -> str:
    """Run podman; its stdout. If `check`, a failure fails the test with podman's output."""
    out = subprocess.run(
        ["podman", *args],
        env=PODMAN_ENV,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0 or not check, f"podman {' '.join(args)}:\n{out.stdout}{out.stderr}"
    return out.stdout


def run_script(script: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run an image script of deploy/image (it installs podman if needed); its seconds and
    its output."""
    started = time.monotonic()
    out = subprocess.run(
        [str(script)],
        env={**os.environ, **(env or {})},
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return time.monotonic() - started, out.stdout
