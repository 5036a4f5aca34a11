"""Fixtures shared by the suite: an isolated model store with a trained model, real databases,
and real `bentoml serve` stacks with users of each role."""

import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.harness import PG_ADMIN, Server, temporary_database
from tests.helpers import PROJECT_DIR

# A model store of the suite's own; set before anything imports bentoml.
os.environ.setdefault("BENTOML_HOME", str(PROJECT_DIR / "build" / "bentoml-test"))

TEST_SECRET = "test-secret-" + "x" * 40
PASSWORD = "correct horse battery staple"
# username -> (roles, active)
USERS = {
    "predictor": (["predict"], True),
    "historian": (["history"], True),
    "admin": (["admin"], True),
    "analyst": (["predict", "history"], True),
    "retired": (["predict"], False),
    "hr": (["predict", "history", "outcomes"], True),
    "hr2": (["predict", "history", "outcomes"], True),
}


@pytest.fixture(scope="session")
def model_tag() -> str:
    """Tag of a model trained on the reference data, trained now if the test store has none
    that carries what the service needs."""
    from training.data import load_reference
    from training.train import current_model, save, train

    return current_model() or save(train(load_reference()))


@pytest.fixture(scope="session")
def challenger() -> str:
    """Tag of a small fairness-aware model saved as the challenger (seconds to train), reused
    while the test store holds one this code trained from the same rows: the session's image packs
    it and names its version, so a new one each session would build (and keep) a new image each."""
    import bentoml
    from sklearn.model_selection import train_test_split

    from training.data import load_reference
    from training.fairness import PROTECTED
    from training.schema import FEATURES
    from training.train import ARTIFACT_VERSION, CHALLENGER_NAME, fingerprint, save, train

    frame = load_reference()
    small, _ = train_test_split(frame, train_size=450, stratify=frame["Attrition"], random_state=3)
    small, seed = small.reset_index(drop=True), 7
    wanted = {"artifact_version": ARTIFACT_VERSION, "data_sha256": fingerprint(small),
              "protected_attributes_excluded": [f for f in FEATURES if f in PROTECTED],  # as stored
              "seed": seed}  # fmt: skip
    for model in bentoml.models.list():  # list(name) raises while there is none of that name
        if model.tag.name == CHALLENGER_NAME and {k: model.info.metadata.get(k) for k in wanted} == wanted:  # fmt: skip
            return str(model.tag)
    result = train(small, exclude=PROTECTED, seed=seed, folds=3, repeats=1,
                   families=("logistic_regression",))  # fmt: skip
    return save(result, challenger=True)


@pytest.fixture(scope="session")
def pipeline(model_tag: str) -> Any:
    import bentoml

    return bentoml.sklearn.load_model(model_tag)


class PostgresDatabases:
    """Throwaway databases on the real PostgreSQL, all dropped at the end of the session."""

    def __init__(self) -> None:
        self.stack = ExitStack()

    def create(self) -> str:
        try:
            return self.stack.enter_context(temporary_database("attrition_test"))
        except psycopg.OperationalError as exc:  # a failure, never a skip: CI must have it
            pytest.fail(f"PostgreSQL is required at {PG_ADMIN}: {exc}")

    def drop_all(self) -> None:
        self.stack.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    dbs = PostgresDatabases()
    yield dbs
    dbs.drop_all()


def database_url(backend: str, postgres: PostgresDatabases, tmp: Path) -> str:
    if backend == "postgresql":
        return postgres.create()
    return f"sqlite:///{tmp / 'attrition.db'}"


def app_settings(url: str, data_dir: Path, **extra: Any) -> Any:
    from settings import Settings

    return Settings(
        database_url=url, data_dir=data_dir, jwt_secret=TEST_SECRET, user_cache_seconds=0, **extra
    ).secured()


def seed_users(url: str) -> None:
    from sqlmodel import Session

    from auth.users import create_user
    from persistence.db import make_engine, upgrade
    from persistence.models import UserCreate

    upgrade(url)
    engine = make_engine(url)
    with Session(engine) as session:
        for name, (roles, active) in USERS.items():
            create_user(
                session=session,
                user_in=UserCreate(username=name, roles=roles, password=PASSWORD, is_active=active),
            )
    engine.dispose()


@dataclass
class Stack:
    """A served service with its database and the settings to mint tokens for it."""

    backend: str
    url: str
    server: Server
    settings: Any
    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, user: str) -> str:
        from auth.tokens import create_token

        if user not in self.tokens:
            roles = USERS[user][0] if user in USERS else ["predict"]
            self.tokens[user] = create_token(self.settings, subject=user, roles=roles)
        return self.tokens[user]

    def headers(self, user: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}


SERVER_ENV = {
    "ATTRITION_JWT_SECRET": TEST_SECRET,
    "ATTRITION_USER_CACHE_SECONDS": "0",
    "ATTRITION_LOGIN_MAX_FAILURES": "3",
    "ATTRITION_LOGIN_LOCKOUT_SECONDS": "120",
    # Lockout counts must not depend on how fast this machine checks passwords: no 503s.
    "ATTRITION_LOGIN_WAIT_SECONDS": "60",
    "ATTRITION_HTTP_HEADER_TIMEOUT_SECONDS": "5",
    "ATTRITION_HTTP_BODY_TIMEOUT_SECONDS": "5",
}


def start_stack(
    backend: str,
    model_tag: str,
    postgres: PostgresDatabases,
    tmp: Path,
    extra_env: dict[str, str] | None = None,
) -> Stack:
    url = database_url(backend, postgres, tmp)
    seed_users(url)
    env = {
        **SERVER_ENV,
        **(extra_env or {}),
        "ATTRITION_MODEL_TAG": model_tag,
        "ATTRITION_DATABASE_URL": url,
        "ATTRITION_DATA_DIR": str(tmp / "data"),
    }
    server = Server("service:AttritionService", env, log=tmp / "serve.log")
    return Stack(backend, url, server, app_settings(url, tmp / "data"))


@pytest.fixture(scope="session")
def stacks(
    model_tag: str, postgres: PostgresDatabases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Stack]]:
    """Servers by backend, started on first use and stopped at the end of the session."""
    started: dict[str, Stack] = {}

    class Lazy(dict[str, Stack]):
        def __missing__(self, backend: str) -> Stack:
            stack = start_stack(backend, model_tag, postgres, tmp_path_factory.mktemp(backend))
            self[backend] = started[backend] = stack
            return stack

    yield Lazy()
    for stack in started.values():
        stack.server.stop()


@pytest.fixture(scope="session")
def stack(stacks: dict[str, Stack]) -> Stack:
    """The PostgreSQL-backed service."""
    return stacks["postgresql"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend_stack(request: pytest.FixtureRequest, stacks: dict[str, Stack]) -> Stack:
    """The service on each database backend."""
    return stacks[request.param]


@pytest.fixture(scope="session")
def server(stack: Stack) -> Server:
    return stack.server
