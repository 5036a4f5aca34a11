"""Shared test helpers: the server harness and payloads from the real data."""

import re
from typing import Any

from loadtests.harness import BENTOML, PROJECT_DIR, Server, free_port

__all__ = ["BENTOML", "CHALLENGE", "PROJECT_DIR", "Server", "employee_rows", "free_port"]

# A WWW-Authenticate challenge built only from fixed texts: never a quote, backslash or byte of
# the request.
CHALLENGE = re.compile(
    'Bearer realm="attrition", error="(invalid_request|invalid_token)", '
    'error_description="[A-Za-z0-9 .,:;\'<>()_-]{1,100}"'
)


def employee_rows(n: int | None = None) -> list[dict[str, Any]]:
    """Real employees from the reference data, as JSON-ready dicts (features only)."""
    from training.data import load_reference
    from training.schema import FEATURES

    frame = load_reference()[list(FEATURES)]
    rows = frame.to_dict("records")
    return rows if n is None else rows[:n]
