"""Images for the container tests, each built once per session (podman's layer cache makes an
unchanged rebuild take seconds)."""

import pytest

from tests.helpers import PROJECT_DIR
from tests.integration.containers import IMAGE_DIR, run_script


@pytest.fixture(scope="session")
def image(model_tag: str) -> str:
    """The service's image, by the same script as `make container`, with podman."""
    env = {"ATTRITION_MODEL_TAG": model_tag, "CONTAINER_ENGINE": "podman"}
    print(f"service image built in {run_script(IMAGE_DIR / 'build.sh', env):.0f}s")
    return (PROJECT_DIR / "build" / "image.txt").read_text().strip()


@pytest.fixture(scope="session")
def postgres_image() -> str:
    """The dev overlay's PostgreSQL image (deploy/image/postgres.sh)."""
    tag = "localhost/attrition-postgres:15"
    print(f"postgres image built in {run_script(IMAGE_DIR / 'postgres.sh', {'POSTGRES_IMAGE': tag}):.0f}s")  # fmt: skip
    return tag
