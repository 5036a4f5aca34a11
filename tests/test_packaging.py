"""Packaging rules: pyproject.toml pins every direct dependency exactly (the locks in
requirements/ pin the rest: tests/test_lock.py)."""

import tomllib

import yaml

from tests.helpers import PROJECT_DIR


def test_pyproject_pins_every_dependency() -> None:
    project = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for where, requirements in [("dependencies", project["dependencies"]), *extras.items()]:
        assert all("==" in r for r in requirements), f"{where}: every dependency is pinned"


def test_configuration_has_no_version_key() -> None:
    # BentoML 1.4.40 crashes at import on `version: 2` in the services config file.
    config = yaml.safe_load((PROJECT_DIR / "configuration.yaml").read_text())
    assert "version" not in config
    assert {"AttritionService", "AttritionModel"} <= set(config["services"])
