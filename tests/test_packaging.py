"""Packaging files agree with each other: the Bento's pins and the monitoring image's are the
project's pins."""

import tomllib

import yaml

from tests.helpers import PROJECT_DIR


def test_bentofile_packages_equal_pyproject_dependencies() -> None:
    project = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]
    bentofile = yaml.safe_load((PROJECT_DIR / "bentofile.yaml").read_text())
    assert sorted(bentofile["python"]["packages"]) == sorted(project["dependencies"])
    assert all("==" in p for p in project["dependencies"]), "every dependency is pinned"


def test_monitoring_image_pins_equal_the_monitoring_extra() -> None:
    extra = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["monitoring"]
    lines = (PROJECT_DIR / "deploy" / "image" / "monitoring-requirements.txt").read_text()
    pins = [ln.strip() for ln in lines.splitlines() if ln.strip() and not ln.startswith("#")]
    assert sorted(pins) == sorted(extra)
    assert all("==" in p for p in extra), "every monitoring dependency is pinned"


def test_configuration_has_no_version_key() -> None:
    # BentoML 1.4.40 crashes at import on `version: 2` in the services config file.
    config = yaml.safe_load((PROJECT_DIR / "configuration.yaml").read_text())
    assert "version" not in config
    assert {"AttritionService", "AttritionModel"} <= set(config["services"])
