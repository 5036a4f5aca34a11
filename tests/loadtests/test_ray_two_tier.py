"""The 2-tier Ray peer answers as the service does: the same probabilities for the same employees
(within the bench's tolerance), and the same refusals of tokens and invalid employees."""

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from auth.tokens import create_token
from loadtests.bench import TOLERANCE, answers, mismatches
from tests.conftest import Stack
from training.data import load_reference
from training.schema import FEATURES

pytest.importorskip("ray")  # the `bench` extra: `make bench` installs it, `make test` does not

pytestmark = pytest.mark.integration

ROWS = load_reference()[list(FEATURES)].head(40).to_dict("records")


@pytest.fixture(scope="module")
def peer(stack: Stack, model_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from loadtests.ray_peer import RayPeer

    token = stack.token("predictor")
    server = RayPeer(
        replicas=1,
        tiers=2,
        model_replicas=1,
        model_tag=model_tag,
        sample=json.dumps(ROWS[0]).encode(),
        log=tmp_path_factory.mktemp("ray") / "peer.log",
        env={"ATTRITION_JWT_SECRET": stack.settings.jwt_secret.get_secret_value()},
        token=token,
    )
    yield server
    server.stop()


def test_the_same_probabilities_as_the_service(peer: Any, stack: Stack) -> None:
    token = stack.token("predictor")
    expected = answers(stack.server.url, ROWS, token)
    got = answers(peer.url, ROWS, token)
    assert len(got) == len(ROWS)
    assert mismatches(expected, got) == [], f"tolerance {TOLERANCE}"


def status(url: str, body: Any, headers: dict[str, str]) -> int:
    return httpx.post(
        f"{url}/predict/attrition", json=body, headers=headers, timeout=30
    ).status_code


def refusals(stack: Stack) -> dict[str, tuple[Any, dict[str, str]]]:
    good = {"Authorization": f"Bearer {stack.token('predictor')}"}
    forged = create_token(
        stack.settings.model_copy(update={"jwt_secret": SecretStr("another-secret-" + "z" * 40)}),
        subject="predictor",
        roles=["predict"],
    )
    row = ROWS[0]
    return {
        "no token": (row, {}),
        "not bearer": (row, {"Authorization": f"Basic {stack.token('predictor')}"}),
        "garbage token": (row, {"Authorization": "Bearer not.a.token"}),
        "forged token": (row, {"Authorization": f"Bearer {forged}"}),
        "role without predict": (row, {"Authorization": f"Bearer {stack.token('historian')}"}),
        "wrong type": ({**row, "Age": "41"}, good),
        "out of range": ({**row, "JobLevel": 9}, good),
        "unknown category": ({**row, "Department": "Legal"}, good),
        "extra field": ({**row, "Salary": 1}, good),
        "missing field": ({k: v for k, v in row.items() if k != "Age"}, good),
        "years rule": ({**row, "YearsAtCompany": row["TotalWorkingYears"] + 1}, good),
        "not an object": ([row], good),
    }


@pytest.mark.parametrize(
    "case",
    [
        ("no token", 401),
        ("not bearer", 401),
        ("garbage token", 401),
        ("forged token", 401),
        ("role without predict", 403),
        ("wrong type", 400),
        ("out of range", 400),
        ("unknown category", 400),
        ("extra field", 400),
        ("missing field", 400),
        ("years rule", 400),
        ("not an object", 400),
    ],
    ids=lambda case: case[0],
)
def test_refuses_what_the_service_refuses(peer: Any, stack: Stack, case: tuple[str, int]) -> None:
    name, code = case
    body, headers = refusals(stack)[name]
    assert status(stack.server.url, body, headers) == code
    assert status(peer.url, body, headers) == code
