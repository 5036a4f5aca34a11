"""A real `bentoml serve` outside development mode refuses to start with a development-only
switch (no auth, no inference log, more public paths), naming it."""

from pathlib import Path

import pytest

from tests.conftest import SERVER_ENV, PostgresDatabases
from tests.harness import Server

pytestmark = pytest.mark.integration

SWITCHES = {
    "auth_off": ({"ATTRITION_AUTH_ENABLED": "false"}, "ATTRITION_AUTH_ENABLED=false"),
    "log_off": ({"ATTRITION_LOG_ENABLED": "false"}, "ATTRITION_LOG_ENABLED=false"),
    "public_history": (
        {"ATTRITION_PUBLIC_PATHS": '["/livez", "/readyz", "/predict/history"]'},
        "ATTRITION_PUBLIC_PATHS beyond the defaults (/predict/history)",
    ),
}


@pytest.mark.parametrize("switch", SWITCHES)
def test_a_production_server_refuses_a_development_only_switch(
    switch: str, model_tag: str, postgres: PostgresDatabases, tmp_path: Path
) -> None:
    values, named = SWITCHES[switch]
    env = {
        **SERVER_ENV,
        **values,
        "ATTRITION_MODEL_TAG": model_tag,
        "ATTRITION_DATABASE_URL": postgres.create(),
        "ATTRITION_DATA_DIR": str(tmp_path / "data"),
    }
    try:
        server = Server("service:AttritionService", env, log=tmp_path / "serve.log", attempts=1)
    except RuntimeError as exc:
        refused = str(exc)
    else:
        server.stop()
        pytest.fail(f"served with {values}")
    assert "server exited" in refused
    assert "only allowed with ATTRITION_DEV_MODE=true" in refused and named in refused, refused
