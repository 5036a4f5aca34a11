"""Fixtures shared by the suite: an isolated model store with a trained model, a served service."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import PROJECT_DIR, Server

# A model store of the suite's own; set before anything imports bentoml.
os.environ.setdefault("BENTOML_HOME", str(PROJECT_DIR / "build" / "bentoml-test"))


@pytest.fixture(scope="session")
def model_tag() -> str:
    """Tag of a model trained on the reference data, trained now if the test store has none."""
    import bentoml

    from training.data import load_reference
    from training.train import save, train

    try:
        return str(bentoml.models.get("attrition:latest").tag)
    except bentoml.exceptions.NotFound:
        return save(train(load_reference()))


@pytest.fixture(scope="session")
def pipeline(model_tag: str):  # type: ignore[no-untyped-def]
    import bentoml

    return bentoml.sklearn.load_model(model_tag)


@pytest.fixture(scope="session")
def server(model_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real `bentoml serve` of the entry service and its runner."""
    log: Path = tmp_path_factory.mktemp("server") / "serve.log"
    srv = Server("service:AttritionService", {"ATTRITION_MODEL_TAG": model_tag}, log=log)
    yield srv
    srv.stop()
