"""Deployment files agree with the code: .env.example, the ConfigMaps, and the rendered
Kubernetes overlays (probes, resources, non-root read-only containers, the images each overlay
sets, drain timing)."""

from typing import Any

import pytest
import yaml

from deploy.envfile import render
from settings import Settings
from tests.helpers import K8S, PROJECT_DIR, rendered


def test_env_example_lists_every_setting_with_its_default() -> None:
    assert (PROJECT_DIR / ".env.example").read_text() == render(), (
        "regenerate: python -m deploy.envfile > .env.example"
    )
    listed = {
        line.split("=", 1)[0].removeprefix("# ")
        for line in render().splitlines()
        if line.startswith("# ATTRITION_")
    }
    assert listed == {f"ATTRITION_{name.upper()}" for name in Settings.model_fields}


def test_the_bentoml_configmap_is_the_projects_configuration() -> None:
    ours = yaml.safe_load((PROJECT_DIR / "configuration.yaml").read_text())
    assert yaml.safe_load((K8S / "base" / "configuration.yaml").read_text()) == ours


def pod_specs(overlay: str) -> dict[str, dict[str, Any]]:
    specs = {}
    for doc in rendered(overlay):
        if doc["kind"] in ("Deployment", "Job"):
            specs[doc["metadata"]["name"]] = doc["spec"]["template"]["spec"]
    return specs


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_container_is_non_root_read_only_with_resources(overlay: str) -> None:
    for name, spec in pod_specs(overlay).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert {"requests", "limits"} <= set(c["resources"]), name


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_image_is_the_one_the_overlay_sets(overlay: str) -> None:
    kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    pinned = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization["images"]}
    for name, spec in pod_specs(overlay).items():
        for c in spec["containers"]:
            assert c["image"] in pinned.values(), f"{name}: {c['image']} is not set by the overlay"


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_services_have_probes_and_a_grace_period_that_covers_the_drain(overlay: str) -> None:
    timeout = yaml.safe_load((PROJECT_DIR / "configuration.yaml").read_text())["services"]
    for name in ("attrition-entry", "attrition-model"):
        spec = pod_specs(overlay)[name]
        (c,) = spec["containers"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
        pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
        service = "AttritionService" if name == "attrition-entry" else "AttritionModel"
        in_flight = timeout[service]["traffic"]["timeout"]
        assert spec["terminationGracePeriodSeconds"] >= pre_stop + in_flight, name


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_settings_in_the_manifests_are_real_settings(overlay: str) -> None:
    names = set()
    for doc in rendered(overlay):
        if doc["kind"] in ("ConfigMap", "Secret"):
            names |= set(doc.get("data", {})) | set(doc.get("stringData", {}))
    known = {f"ATTRITION_{n.upper()}" for n in Settings.model_fields}
    assert {n for n in names if n.startswith("ATTRITION_")} <= known


def test_the_prod_overlay_carries_no_secret_and_the_base_only_empty_values() -> None:
    assert not [d for d in rendered("prod") if d["kind"] == "Secret"]
    base = yaml.safe_load((K8S / "base" / "secret.yaml").read_text())
    assert set(base["stringData"].values()) == {""}
