"""`bentoml build` packs code and the pinned model; the built Bento serves from a fresh store."""

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from auth.tokens import create_token
from persistence.db import current_revision
from tests.conftest import SERVER_ENV, app_settings, seed_users
from tests.harness import BENTOML, Server
from tests.helpers import PROJECT_DIR, employee_rows

pytestmark = pytest.mark.integration


def bentoml_cli(*args: str, home: str | Path) -> str:
    env = {**os.environ, "BENTOML_HOME": str(home)}
    out = subprocess.run(
        [BENTOML, *args], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_built_bento_serves_its_packed_model(
    model_tag: str, pipeline: object, tmp_path: Path
) -> None:
    home = os.environ["BENTOML_HOME"]
    env_model = {"ATTRITION_MODEL_TAG": model_tag}
    os.environ.update(env_model)  # service.py resolves the model at build time too
    try:
        tag = bentoml_cli("build", "--output", "tag", home=home).strip().split("__tag__:")[-1]
    finally:
        os.environ.pop("ATTRITION_MODEL_TAG")
    archive = tmp_path / "attrition.bento"
    bentoml_cli("export", tag, str(archive), home=home)

    # A store that has never seen the model: everything must come from the Bento.
    fresh = tmp_path / "fresh-home"
    bentoml_cli("import", str(archive), home=fresh)
    assert model_tag in bentoml_cli("models", "list", home=fresh)

    env = {**SERVER_ENV, "BENTOML_HOME": str(fresh), "ATTRITION_DATA_DIR": str(tmp_path / "data")}
    srv = Server(tag, env, log=tmp_path / "bento.log")
    try:
        row = employee_rows(1)[0]
        settings = app_settings(
            f"sqlite:///{tmp_path / 'data' / 'attrition.db'}", tmp_path / "data"
        )
        # The Bento applied the migrations at deployment (on_deployment), before any worker.
        assert current_revision(settings.sqlalchemy_url) is not None
        seed_users(settings.sqlalchemy_url)
        token = create_token(settings, subject="predictor", roles=["predict"])
        r = httpx.post(
            f"{srv.url}/predict/attrition",
            json=row,
            timeout=30,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["model_tag"] == model_tag
        import pandas as pd

        want = pipeline.predict_proba(pd.DataFrame([row]))[0, 1]  # type: ignore[attr-defined]
        assert abs(r.json()["probability"] - want) <= 1e-9
        # The HTTP limits come with the Bento (as in its container), not from this checkout.
        big = httpx.get(f"{srv.url}/livez", headers={"X-Big": "a" * 40_000}, timeout=30)
        assert big.status_code == 431
    finally:
        srv.stop()
