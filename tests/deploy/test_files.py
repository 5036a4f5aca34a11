"""Deployment files agree with the code: .env.example, the ConfigMaps, and the rendered
Kubernetes overlays (every pod template, the CronJob's too: non-root read-only containers,
resources, images set by the overlay, ConfigMaps and Secrets that exist, real settings; probes
and drain timing of the services)."""

from typing import Any

import pytest
import yaml

from deploy.envfile import render, variable
from settings import Settings
from tests.helpers import K8S, PROJECT_DIR, rendered


def test_env_example_lists_every_setting_with_its_default() -> None:
    assert (PROJECT_DIR / ".env.example").read_text() == render(), (
        "regenerate: python -m deploy.envfile > .env.example"
    )
    listed = {
        line.split("=", 1)[0].removeprefix("# ")
        for line in render().splitlines()
        if line.startswith(("# ATTRITION_", "# OTEL_"))
    }
    assert listed == {variable(name, field) for name, field in Settings.model_fields.items()}


def test_the_bentoml_configmap_is_the_projects_configuration() -> None:
    ours = yaml.safe_load((PROJECT_DIR / "configuration.yaml").read_text())
    assert yaml.safe_load((K8S / "base" / "configuration.yaml").read_text()) == ours


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template's spec of a workload (a CronJob's through its jobTemplate), else None."""
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    template = spec.get("template", {}).get("spec", {})
    return template if "containers" in template else None


def pod_specs(overlay: str) -> dict[str, dict[str, Any]]:
    """Every pod template of the rendered overlay, by its workload's name."""
    return {d["metadata"]["name"]: s for d in rendered(overlay) if (s := pod_spec(d)) is not None}


def containers(overlay: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, c) for name, spec in pod_specs(overlay).items() for c in spec["containers"]]


def test_every_kind_of_pod_template_is_checked() -> None:
    kinds = {d["kind"] for d in rendered("prod") if pod_spec(d) is not None}
    assert kinds == {"Deployment", "Job", "CronJob"}
    workloads = {"attrition-entry", "attrition-model", "attrition-migrate", "attrition-monitoring"}
    assert workloads <= set(pod_specs("prod"))


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_container_is_non_root_read_only_with_resources(overlay: str) -> None:
    for name, spec in pod_specs(overlay).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
    for name, c in containers(overlay):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"], name
        assert {"requests", "limits"} <= set(c["resources"]), name


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_image_is_the_one_the_overlay_sets(overlay: str) -> None:
    kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    pinned = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization["images"]}
    assert {"attrition-service", "attrition-monitoring"} <= set(pinned)
    for name, c in containers(overlay):
        assert c["image"] in pinned.values(), f"{name}: {c['image']} is not set by the overlay"
    used = {c["image"] for _, c in containers(overlay)}
    assert pinned["attrition-service"] in used and pinned["attrition-monitoring"] in used
    # One `make container` builds both images under one tag; CD promotes them together.
    assert pinned["attrition-service"].split(":")[1] == pinned["attrition-monitoring"].split(":")[1]


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_configmap_and_secret_a_pod_uses_exists(overlay: str) -> None:
    docs = rendered(overlay)
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    # The prod Secret is created from the secret store, under the base template's name.
    secrets.add(yaml.safe_load((K8S / "base" / "secret.yaml").read_text())["metadata"]["name"])
    for name, spec in pod_specs(overlay).items():
        used = [
            (v["configMap"]["name"], config_maps)
            for v in spec.get("volumes", [])
            if "configMap" in v
        ]
        for c in spec["containers"]:
            for ref in c.get("envFrom", []):
                if "configMapRef" in ref:
                    used.append((ref["configMapRef"]["name"], config_maps))
                else:
                    used.append((ref["secretRef"]["name"], secrets))
        for ref_name, known in used:
            assert ref_name in known, f"{name} uses {ref_name}, which the overlay does not make"


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
    names |= {e["name"] for _, c in containers(overlay) for e in c.get("env", [])}
    known = {f"ATTRITION_{n.upper()}" for n in Settings.model_fields}
    assert {n for n in names if n.startswith("ATTRITION_")} <= known


def test_the_prod_overlay_carries_no_secret_and_the_base_only_empty_values() -> None:
    assert not [d for d in rendered("prod") if d["kind"] == "Secret"]
    base = yaml.safe_load((K8S / "base" / "secret.yaml").read_text())
    assert set(base["stringData"].values()) == {""}
