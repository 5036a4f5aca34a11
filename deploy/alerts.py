"""The PrometheusRule of the Kubernetes base, generated from the plain rules file
(python -m deploy.alerts > deploy/k8s/base/prometheus-rule.yaml; a test keeps it current)."""

import sys
from textwrap import indent

from settings import PROJECT_DIR

RULES = PROJECT_DIR / "deploy" / "prometheus" / "alerts.yaml"
PROMETHEUS_RULE = PROJECT_DIR / "deploy" / "k8s" / "base" / "prometheus-rule.yaml"

HEADER = """\
# The alert rules for the Prometheus Operator (its CRDs must be installed: see
# docs/operations/alerts.md). Generated from deploy/prometheus/alerts.yaml by
# `python -m deploy.alerts > deploy/k8s/base/prometheus-rule.yaml`: edit that file, not this one.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: attrition
spec:
"""


def render() -> str:
    """The PrometheusRule: the rules file's groups (comments kept) under `spec`."""
    text = RULES.read_text()
    start = text.index("\ngroups:") + 1  # after the file's own header comment
    return HEADER + indent(text[start:], "  ")


if __name__ == "__main__":
    sys.stdout.write(render())
