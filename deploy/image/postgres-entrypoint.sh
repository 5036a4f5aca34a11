#!/bin/sh
# The dev PostgreSQL's entrypoint: on first start a cluster with an `attrition` role and database
# (trust authentication, development only), then the server in the foreground as PID 1.
# Writes only to $PGDATA (a volume) and /run/postgresql, so the root may be read-only.
set -eu
: "${PGDATA:?}" "${PGPORT:?}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  # Built beside $PGDATA and renamed when complete: a first start killed half-way leaves no
  # cluster that later starts would take for a finished one (without the role or database).
  init="$PGDATA.init"
  rm -rf "$init"
  initdb --auth=trust --username=postgres --encoding=UTF8 --locale=C.UTF-8 "$init"
  # Other pods connect over the pod network; initdb only trusts loopback.
  echo "host all all all trust" >>"$init/pg_hba.conf"
  pg_ctl -D "$init" -w -o "-c listen_addresses= -c unix_socket_directories=/run/postgresql" start
  psql -v ON_ERROR_STOP=1 -h /run/postgresql -U postgres -d postgres -q \
    -c "CREATE ROLE attrition LOGIN" -c "CREATE DATABASE attrition OWNER attrition"
  pg_ctl -D "$init" -w -m fast stop
  mv "$init" "$PGDATA"
fi
exec postgres -c listen_addresses='*' -c unix_socket_directories=/run/postgresql
