"""The PromQL of the alert rules and of the Grafana dashboard: the expressions, the metric names
they read, and promtool's verdict on them."""

import json
import re
import subprocess
import tempfile
from pathlib import Path

import yaml

from tests.helpers import PROJECT_DIR

RULES = PROJECT_DIR / "deploy" / "prometheus" / "alerts.yaml"
RULES_TESTS = PROJECT_DIR / "deploy" / "prometheus" / "alerts_test.yaml"
DASHBOARD = PROJECT_DIR / "deploy" / "grafana" / "attrition.json"
INSTALL = PROJECT_DIR / "deploy" / "prometheus" / "install.sh"
# The dashboard's variables as Grafana fills them in before it sends a query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".*"}

_TOKENS = re.compile(
    r"""
      "(?:[^"\\]|\\.)*" | '(?:[^'\\]|\\.)*' | `[^`]*`                    # strings
    | \{[^}]*\}                                                        # label matchers
    | \[[^\]]*\]                                                       # ranges, subqueries
    | \#[^\n]*                                                         # comments
    | \b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)  # label lists
    | \d[\w.]*                                                         # numbers, durations
    | (?P<name>[A-Za-z_:][\w:]*)(?P<call>\s*\()?                       # names, calls
    """,
    re.VERBOSE,
)
# Words that are not metric names when they are not called: binary and aggregation operators
# (`sum by (le) (...)`), modifiers, and the number literals.
KEYWORDS = frozenset(
    "and or unless bool offset by without on ignoring group_left group_right inf nan "
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile".split()
)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (the names of its vector selectors)."""
    return {
        m["name"]
        for m in _TOKENS.finditer(expr)
        if m["name"] and not m["call"] and m["name"].lower() not in KEYWORDS
    }


def rule_exprs(path: Path = RULES) -> dict[str, str]:
    """Each alert's expression, by alert name."""
    groups = yaml.safe_load(path.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_panels() -> list[dict]:
    """The dashboard's panels, those inside rows too."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [p for top in panels for p in [top, *top.get("panels", [])]]


def dashboard_exprs() -> dict[str, str]:
    """Each query of the dashboard with its variables filled in, by panel title and query id."""
    found = {}
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            found[f"{panel['title']} ({target['refId']})"] = expr
    return found


def dashboard_variable_metrics() -> set[str]:
    """Metric names the dashboard's variables read (Grafana's label_values(metric, label))."""
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    queries = [v["definition"] for v in variables if v["type"] == "query"]
    return {m for q in queries for m in re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)", q)}


def ensure_promtool() -> None:
    """promtool and prometheus from Debian's package, as `make lint` installs them."""
    subprocess.run(["bash", str(INSTALL)], check=True, capture_output=True, timeout=600)


def promtool_errors(exprs: dict[str, str]) -> str:
    """promtool's complaints about the expressions (empty when it parses them all), each checked
    as a recording rule of a rules file, since promtool has no PromQL check of its own."""
    rules = [{"record": f"check:expr_{i}", "expr": e} for i, e in enumerate(exprs.values())]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}, f)
        f.flush()
        out = subprocess.run(
            ["promtool", "check", "rules", f.name], capture_output=True, text=True, timeout=60
        )
    if out.returncode == 0:
        return ""
    names = "\n".join(f"expr_{i}: {name}" for i, name in enumerate(exprs))
    return f"{out.stdout}{out.stderr}\n{names}"
