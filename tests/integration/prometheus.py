"""A real Prometheus (Debian's package, as `make lint` installs it) that scrapes a real server
every second and evaluates alert rules every second."""

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.harness import ServerProcess


class Prometheus(ServerProcess):
    """`prometheus` on a free port with its own storage, scraping `target` (a base URL)."""

    def __init__(self, target: str, rules: Path, work: Path, *, job: str = "attrition") -> None:
        self.config = work / "prometheus.yml"
        self.storage = work / "tsdb"
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target.split("://", 1)[1]]}]}
            ],
        }
        self.config.write_text(yaml.safe_dump(config))
        super().__init__(os.environ, log=work / "prometheus.log", timeout=60)

    def command(self, port: int) -> list[str]:
        return [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.storage}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200

    def port_taken(self, log: str) -> bool:
        return "address already in use" in log

    def api(self, path: str, **params: str) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        r.raise_for_status()
        return r.json()["data"]

    def alerts(self, name: str) -> list[dict[str, Any]]:
        """The active (pending or firing) alerts called `name`."""
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]

    def value(self, expr: str) -> float | None:
        """An instant query's single value, or None when it has no result."""
        result = self.api("query", query=expr)["result"]
        return float(result[0]["value"][1]) if result else None

    def metric_names(self) -> set[str]:
        return set(self.api("label/__name__/values"))
