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
# uid/gid 999 as in the manifests' runAsUser (and the official postgres image); Debian's package
# would pick a free system uid (100 here), and initdb refuses to run as a uid without a name.
podman build --network host --build-arg "BASE=$base" -t "$tag" -f - deploy/image <<'CONTAINERFILE'
ARG BASE
FROM $BASE
RUN set -eux; \
    groupadd --system --gid 999 postgres; \
    useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql --shell /bin/sh postgres; \
    mkdir -p /etc/postgresql-common/createcluster.d; \
    echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/no-main.conf; \
    ca=/etc/ssl/certs/ca-certificates.crt; [ -f /etc/ssl/build/ca-bundle.pem ] && ca=/etc/ssl/build/ca-bundle.pem; \
    apt-get -o Acquire::https::CaInfo="$ca" update -qq; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /etc/ssl/build; \
    install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data; \
    install -d -o postgres -g postgres -m 2775 /run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data/pgdata PGPORT=5433
USER 999:999
EXPOSE 5433
# SIGTERM is PostgreSQL's "smart" shutdown, which waits for every client to disconnect (pooled
# connections never do) until the runtime kills it; SIGINT is the fast, clean shutdown.
STOPSIGNAL SIGINT
CMD ["/usr/local/bin/postgres-entrypoint"]
CONTAINERFILE
echo "built $tag"
