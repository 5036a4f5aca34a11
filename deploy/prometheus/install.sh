#!/usr/bin/env bash
# Prometheus and promtool from Debian's `prometheus` package, for `make lint` (promtool check and
# test rules) and the alert tests (a real Prometheus). Idempotent; needs root (or sudo) for apt.
set -euo pipefail

if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  exit 0
fi
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
echo "installing prometheus (apt: promtool and the server)"
"${sudo[@]}" apt-get update -qq
# The node exporter (recommended) is not needed.
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends prometheus
# Here it is a tool: the tests start their own servers on free ports. Where systemd runs, the
# package started and enabled its own service (port 9090) on install; stop it.
if [[ -d /run/systemd/system ]]; then
  "${sudo[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
