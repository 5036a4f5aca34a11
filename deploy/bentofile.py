"""The bentofile `make container` builds from (deploy/image/build.sh): the project's, with the
resolved model tags baked into its `envs` and, where no Docker Hub is reachable, a local base.

`python -m deploy.bentofile MODEL CHALLENGER BASE > build/bentofile.container.yaml`; an empty
CHALLENGER means none, an empty BASE keeps BentoML's default base.
"""

import sys
from pathlib import Path
from typing import Any

import yaml

from settings import PROJECT_DIR

# What the image serves, pinned by build.sh: never what the project's bentofile might carry.
PINNED = ("ATTRITION_MODEL_TAG", "ATTRITION_CHALLENGER_TAG")


def container_bentofile(
    spec: dict[str, Any], *, model: str, challenger: str = "", base_image: str = ""
) -> dict[str, Any]:
    """`spec` with ATTRITION_MODEL_TAG (and ATTRITION_CHALLENGER_TAG, if any) set to the given
    full tags in its envs, and `base_image` as the Docker base if given."""
    spec = {**spec, "docker": dict(spec.get("docker", {}))}
    envs = [e for e in spec.get("envs", []) if e["name"] not in PINNED]
    envs.append({"name": "ATTRITION_MODEL_TAG", "value": model})
    if challenger:
        envs.append({"name": "ATTRITION_CHALLENGER_TAG", "value": challenger})
    spec["envs"] = envs
    if base_image:
        spec["docker"]["base_image"] = base_image
        for key in ("distro", "python_version"):  # only describe BentoML's default base
            spec["docker"].pop(key, None)
    return spec


def main(argv: list[str], source: Path = PROJECT_DIR / "bentofile.yaml") -> None:
    model, challenger, base_image = argv
    spec = yaml.safe_load(source.read_text())
    built = container_bentofile(spec, model=model, challenger=challenger, base_image=base_image)
    yaml.safe_dump(built, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main(sys.argv[1:])
