"""Settings refuse unsafe auth configuration and development-only switches outside development
mode."""

from pathlib import Path

import pytest

from settings import DEFAULT_PUBLIC_PATHS, Settings


@pytest.mark.parametrize("secret", [None, "short", "changeme", "x" * 31])
def test_weak_or_missing_secret_is_refused(secret: str | None, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Settings(jwt_secret=secret, data_dir=tmp_path).secured()


def test_known_default_is_refused_even_when_long(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Settings(jwt_secret="please-change-me-in-production", data_dir=tmp_path).secured()


def test_dev_mode_generates_one_shared_secret(tmp_path: Path) -> None:
    first = Settings(dev_mode=True, data_dir=tmp_path).secured()
    second = Settings(dev_mode=True, data_dir=tmp_path).secured()
    assert first.jwt_secret is not None and second.jwt_secret is not None
    assert len(first.jwt_secret.get_secret_value()) >= 32
    assert first.jwt_secret.get_secret_value() == second.jwt_secret.get_secret_value()
    assert (tmp_path / "dev-jwt-secret").stat().st_mode & 0o077 == 0


# Switches that break a promise of the service: each refused outside development mode.
DEV_ONLY = {
    "auth_off": ({"auth_enabled": False}, "ATTRITION_AUTH_ENABLED=false"),
    "log_off": ({"log_enabled": False}, "ATTRITION_LOG_ENABLED=false"),
    "public_history": (
        {"public_paths": (*DEFAULT_PUBLIC_PATHS, "/predict/history")},
        "ATTRITION_PUBLIC_PATHS beyond the defaults (/predict/history)",
    ),
}


@pytest.mark.parametrize("switch", DEV_ONLY)
def test_dev_only_switches_are_refused_outside_dev_mode(switch: str, tmp_path: Path) -> None:
    values, named = DEV_ONLY[switch]
    with pytest.raises(ValueError, match="only allowed with ATTRITION_DEV_MODE=true") as refused:
        Settings(jwt_secret="k" * 40, data_dir=tmp_path, **values).secured()
    assert named in str(refused.value)
    Settings(dev_mode=True, data_dir=tmp_path, **values).secured()


def test_every_refused_switch_is_named_at_once(tmp_path: Path) -> None:
    every = {k: v for values, _ in DEV_ONLY.values() for k, v in values.items()}
    with pytest.raises(ValueError) as refused:
        Settings(jwt_secret="k" * 40, data_dir=tmp_path, **every).secured()
    assert all(named in str(refused.value) for _, named in DEV_ONLY.values())


def test_fewer_public_paths_are_allowed(tmp_path: Path) -> None:
    """Requiring a token on more routes (e.g. /metrics) weakens nothing."""
    fewer = tuple(p for p in DEFAULT_PUBLIC_PATHS if p not in ("/metrics", "/docs.json"))
    Settings(jwt_secret="k" * 40, data_dir=tmp_path, public_paths=fewer).secured()


def test_asymmetric_algorithm_needs_a_public_key() -> None:
    with pytest.raises(ValueError, match="PUBLIC_KEY_FILE"):
        Settings(jwt_algorithm="RS256").secured()


def test_sqlite_is_the_default_database(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).sqlalchemy_url == f"sqlite:///{tmp_path / 'attrition.db'}"


def test_environment_variables_use_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTRITION_MAX_BATCH_SIZE", "17")
    assert Settings().max_batch_size == 17


def test_an_empty_challenger_tag_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """So a ConfigMap's empty entry turns off the challenger an image carries."""
    monkeypatch.setenv("ATTRITION_CHALLENGER_TAG", "")
    assert Settings().challenger_tag is None
    monkeypatch.setenv("ATTRITION_CHALLENGER_TAG", "attrition-challenger:c1")
    assert Settings().challenger_tag == "attrition-challenger:c1"


def test_minting_uses_the_development_secret_a_dev_server_left(tmp_path: Path) -> None:
    server = Settings(dev_mode=True, data_dir=tmp_path).secured()  # `make serve` generated it
    cli = Settings(data_dir=tmp_path).for_minting()  # a shell without ATTRITION_DEV_MODE
    assert cli.jwt_secret is not None and server.jwt_secret is not None
    assert cli.jwt_secret.get_secret_value() == server.jwt_secret.get_secret_value()
    own = Settings(data_dir=tmp_path, jwt_secret="k" * 40).for_minting()
    assert own.jwt_secret is not None and own.jwt_secret.get_secret_value() == "k" * 40


def test_minting_without_any_key_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ATTRITION_JWT_SECRET"):
        Settings(data_dir=tmp_path).for_minting()
    assert not (tmp_path / "dev-jwt-secret").exists()  # nothing generated behind the user's back


def test_a_production_server_never_adopts_a_development_secret(tmp_path: Path) -> None:
    Settings(dev_mode=True, data_dir=tmp_path).secured()
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Settings(data_dir=tmp_path).secured()


def test_the_env_file_is_the_projects_wherever_the_process_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("ATTRITION_MAX_BATCH_SIZE=3\n")  # not the project's .env
    assert Settings().max_batch_size != 3


def test_inline_placement_refuses_a_model_service_url(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unset ATTRITION_MODEL_URL"):
        Settings(data_dir=tmp_path, model_placement="inline", model_url="http://model:3000")
    assert Settings(data_dir=tmp_path, model_placement="inline").model_url is None
    Settings(data_dir=tmp_path, model_url="http://model:3000")  # the service placement's split
