"""Application settings: one validated class, read from ATTRITION_* variables and .env."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parent


class Settings(BaseSettings):
    """Everything the application (not the BentoML runtime) can be told."""

    model_config = SettingsConfigDict(env_prefix="ATTRITION_", env_file=".env", extra="ignore")

    model_tag: str = "attrition:latest"
    """Model to serve from the BentoML model store; pin a version (attrition:abc123) in production."""

    max_batch_size: int = Field(1000, ge=1, le=100_000)
    """Most employees accepted by one call of the batch route."""

    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Largest request body accepted, in bytes; larger bodies get 413."""

    runner_max_batch_size: int = Field(1000, ge=2)
    """Most employees the runner scores in one adaptive batch."""

    runner_max_latency_ms: int = Field(1000, ge=1)
    """Latency bound the runner's adaptive batching dispatcher aims for."""

    data_dir: Path = PROJECT_DIR / "data"
    """Folder for local state (SQLite database, spool files)."""


@lru_cache
def get_settings() -> Settings:
    """The settings, built once per process."""
    return Settings()
