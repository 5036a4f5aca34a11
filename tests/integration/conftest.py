"""Images for the container tests, each built once per session (podman's layer cache makes an
unchanged rebuild take seconds)."""

import pytest

from tests.helpers import PROJECT_DIR
from tests.integration.containers import IMAGE_DIR, run_script


@pytest.fixture(scope="session")
def image(model_tag: str, challenger: str) -> str:
    """The service's image, by the same script as `make container`, with podman (which also
    builds the monitoring image on it); it carries a challenger, so the one build covers both."""
    env = {"ATTRITION_MODEL_TAG": model_tag, "ATTRITION_CHALLENGER_TAG": challenger,
           "CONTAINER_ENGINE": "podman"}  # fmt: skip
    seconds, out = run_script(IMAGE_DIR / "build.sh", env)
    monitoring = [ln for ln in out.splitlines() if ln.startswith("built attrition-monitoring")]
    print(f"service and monitoring images built in {seconds:.0f}s ({'; '.join(monitoring)})")
    return (PROJECT_DIR / "build" / "image.txt").read_text().strip()


@pytest.fixture(scope="session")
def monitoring_image(image: str) -> str:
    """The monitoring report's image, built on `image` by the same `make container` run."""
    return (PROJECT_DIR / "build" / "monitoring-image.txt").read_text().strip()


@pytest.fixture(scope="session")
def postgres_image() -> str:
    """The dev overlay's PostgreSQL image (deploy/image/postgres.sh)."""
    tag = "localhost/attrition-postgres:15"
    print(f"postgres image built in {run_script(IMAGE_DIR / 'postgres.sh', {'POSTGRES_IMAGE': tag})[0]:.0f}s")  # fmt: skip
    return tag
