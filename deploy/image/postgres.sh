#!/usr/bin/env bash
# The dev overlay's PostgreSQL 15 image, from Debian's packages on the same bootstrapped base
# (no Docker Hub). Trust authentication: for development clusters and tests only.
set -euo pipefail
shopt -s inherit_errexit
PROJECT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$PROJECT_DIR"
# shellcheck source=deploy/image/podman.sh
source deploy/image/podman.sh
# shellcheck source=deploy/image/base.sh
source deploy/image/base.sh
setup_podman
base=$(ensure_base_image)
tag=${POSTGRES_IMAGE:-localhost/attrition-postgres:15}
podman build --network host --build-arg "BASE=$base" -t "$tag" -f - deploy/image <<'CONTAINERFILE'
ARG BASE
FROM $BASE
RUN set -eux; \
    ca=/etc/ssl/certs/ca-certificates.crt; [ -f /etc/ssl/build/ca-bundle.pem ] && ca=/etc/ssl/build/ca-bundle.pem; \
    apt-get -o Acquire::https::CaInfo="$ca" update -qq; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /etc/ssl/build; \
    install -d -o postgres -g postgres /var/lib/postgresql/data /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data/pgdata
USER postgres
EXPOSE 5433
# First start: a cluster with an `attrition` role and database; then the server on port 5433.
CMD ["/bin/sh", "-c", "[ -s \"$PGDATA/PG_VERSION\" ] || { initdb -A trust -U postgres \"$PGDATA\" && pg_ctl -w -o '-c listen_addresses=127.0.0.1 -p 5433' start && createuser -h 127.0.0.1 -p 5433 -U postgres attrition && createdb -h 127.0.0.1 -p 5433 -U postgres -O attrition attrition && pg_ctl -w stop; }; exec postgres -c listen_addresses='*' -p 5433 -c unix_socket_directories=/var/run/postgresql"]
CONTAINERFILE
echo "built $tag"
