#!/usr/bin/env bash
# make container: build the Bento and an OCI image of it, tagged <project version>-<model version>
# (e.g. attrition-service:0.1.0-x5mglnhkykwuwax4), and write that reference to build/image.txt;
# then the monitoring report's image on top of it (monitoring.Containerfile), same tag, its
# reference in build/monitoring-image.txt.
# With ATTRITION_CHALLENGER_TAG set, the challenger is packed too (the shadow a promotion makes
# answer, no rebuild needed) and the tag names both: <project version>-<model version>-<challenger
# version> (e.g. 0.1.0-x5mglnhkykwuwax4-q2k7dbxkzgwuwax4); three parts, not two. The full tags
# (name:version) are the image's ATTRITION_MODEL_TAG and ATTRITION_CHALLENGER_TAG.
# With a Docker engine: `bentoml containerize` on BentoML's default base (python:3.11-slim).
# Without one (no Docker engine, no Docker Hub): podman from Debian's packages and a base image
# bootstrapped from Debian's packages; whatever is missing is installed here.
set -euo pipefail
shopt -s inherit_errexit
PROJECT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$PROJECT_DIR"
BIN=${BIN:-$PROJECT_DIR/.venv/bin}
IMAGE_NAME=${IMAGE_NAME:-attrition-service}
MONITORING_IMAGE_NAME=${MONITORING_IMAGE_NAME:-attrition-monitoring}
# shellcheck source=deploy/image/podman.sh
source deploy/image/podman.sh
# shellcheck source=deploy/image/base.sh
source deploy/image/base.sh

version=$("$BIN/python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
# The model the image serves, ATTRITION_MODEL_TAG (default attrition:latest), and its challenger,
# ATTRITION_CHALLENGER_TAG (default none; empty = none), each resolved once to name:version.
resolved=$("$BIN/python" -c '
import bentoml
from settings import get_settings
s = get_settings()
print(bentoml.models.get(s.model_tag).tag, bentoml.models.get(s.challenger_tag).tag if s.challenger_tag else "")
')
read -r model challenger <<<"$resolved"
tag="$version-${model#*:}${challenger:+-${challenger#*:}}"

base_image=""
# CONTAINER_ENGINE=podman|docker forces one (the tests run the image with podman); default: a
# working Docker engine if there is one.
engine=${CONTAINER_ENGINE:-}
if [[ -z $engine ]] && command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  engine=docker
fi
if [[ $engine == docker ]]; then
  build_opts=()
  network=()
else
  engine=podman
  setup_podman
  base_image=$(ensure_base_image)
  build_opts=(--opt network=host)
  network=(--network host)
fi

# The build's bentofile: the project's, with the pinned models baked in (and the local base).
mkdir -p build
"$BIN/python" -m deploy.bentofile "$model" "$challenger" "$base_image" >build/bentofile.container.yaml

"$BIN/bentoml" delete -y "attrition_service:$tag" >/dev/null 2>&1 || true
# service.py packs the models these name, the ones the tag names (an empty challenger: none).
ATTRITION_MODEL_TAG=$model ATTRITION_CHALLENGER_TAG=$challenger "$BIN/bentoml" build \
  -f build/bentofile.container.yaml --version "$tag" --output tag >/dev/null
image_id() { "$engine" image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
previous=$(image_id "$IMAGE_NAME:$tag")
previous_monitoring=$(image_id "$MONITORING_IMAGE_NAME:$tag")

# BentoML 1.4.40 renders a Bento's dockerfile_template from a temporary copy of the Bento and
# refuses it unless that copy lies under the working directory: give it one under ours.
mkdir -p build/containerize
(cd build/containerize && TMPDIR=$PWD "$BIN/bentoml" containerize "attrition_service:$tag" \
  --backend "$engine" --image-tag "$IMAGE_NAME:$tag" "${build_opts[@]}")
echo "$IMAGE_NAME:$tag" >build/image.txt
echo "built $IMAGE_NAME:$tag ($engine)"

# The monitoring image: a context of only what it adds (the monitoring lock and code).
started=$SECONDS
rm -rf build/monitoring-image
mkdir -p build/monitoring-image/monitoring
cp requirements/monitoring.txt build/monitoring-image/monitoring-requirements.txt
cp monitoring/*.py build/monitoring-image/monitoring/
# The host's CA bundle for the build's downloads (a TLS-inspecting proxy), as a build secret.
secret=()
if [[ -s /etc/ssl/certs/ca-certificates.crt ]]; then
  secret=(--secret id=build-ca,src=/etc/ssl/certs/ca-certificates.crt)
fi
"$engine" build "${network[@]}" "${secret[@]}" --build-arg "SERVICE_IMAGE=$IMAGE_NAME:$tag" \
  -f deploy/image/monitoring.Containerfile -t "$MONITORING_IMAGE_NAME:$tag" build/monitoring-image
echo "$MONITORING_IMAGE_NAME:$tag" >build/monitoring-image.txt
echo "built $MONITORING_IMAGE_NAME:$tag in $((SECONDS - started)) s ($engine)"

# A rebuild under the same tag (new code, same model) leaves the old images untagged: remove them
# unless a container still uses them, or every test session leaves two behind. The monitoring
# image first: its old one is a child of the old service image, which cannot go before it.
remove_replaced() { # <the id a reference had before> <the reference>
  if [[ -n $1 && $1 != "$(image_id "$2")" ]]; then
    "$engine" image rm "$1" >/dev/null 2>&1 || true
  fi
}
remove_replaced "$previous_monitoring" "$MONITORING_IMAGE_NAME:$tag"
remove_replaced "$previous" "$IMAGE_NAME:$tag"
