"""The bentofile `make container` builds from (deploy/bentofile.py): the project's, with the model
and the challenger pinned in its envs, and a local base where one is given."""

import io
from contextlib import redirect_stdout

import yaml

from deploy.bentofile import container_bentofile, main
from settings import PROJECT_DIR

PROJECT = yaml.safe_load((PROJECT_DIR / "bentofile.yaml").read_text())
INHERITED = {**PROJECT, "envs": [{"name": "ATTRITION_MODEL_TAG", "value": "attrition:latest"},
                                 {"name": "ATTRITION_CHALLENGER_TAG", "value": "old:one"},
                                 {"name": "ATTRITION_OTHER", "value": "kept"}]}  # fmt: skip


def envs(spec: dict[str, object]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in spec["envs"]}  # type: ignore[attr-defined]


def test_the_challenger_is_pinned_with_the_model_and_replaces_an_inherited_one() -> None:
    built = container_bentofile(
        INHERITED, model="attrition:m1", challenger="attrition-challenger:c1"
    )
    assert envs(built) == {"ATTRITION_OTHER": "kept", "ATTRITION_MODEL_TAG": "attrition:m1",
                           "ATTRITION_CHALLENGER_TAG": "attrition-challenger:c1"}  # fmt: skip
    assert len(built["envs"]) == 3
    assert built["docker"] == PROJECT["docker"]  # BentoML's default base described as it is


def test_without_a_challenger_none_is_baked_in_not_even_an_inherited_one() -> None:
    built = container_bentofile(INHERITED, model="attrition:m1")
    assert envs(built) == {"ATTRITION_OTHER": "kept", "ATTRITION_MODEL_TAG": "attrition:m1"}
    assert envs(INHERITED)["ATTRITION_CHALLENGER_TAG"] == "old:one"  # the input is left alone


def test_the_script_writes_the_projects_bentofile_with_a_local_base() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        main(["attrition:m1", "", "localhost/attrition-base:abc"])
    built = yaml.safe_load(out.getvalue())
    assert envs(built)["ATTRITION_MODEL_TAG"] == "attrition:m1"
    assert "ATTRITION_CHALLENGER_TAG" not in envs(built)
    assert built["docker"]["base_image"] == "localhost/attrition-base:abc"
    assert not {"distro", "python_version"} & set(built["docker"])
    assert built["service"] == PROJECT["service"] and built["include"] == PROJECT["include"]
