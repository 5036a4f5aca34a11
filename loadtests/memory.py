"""What each placement of the model costs in memory: start a real `bentoml serve` per placement
(service, inline; with --challenger also each with a challenger in shadow), send it predictions,
then read every process's memory (psutil: RSS, and USS/PSS, which count shared pages once).

python -m loadtests.memory --requests 2000
python -m loadtests.memory --challenger attrition-challenger:latest
"""

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.bench import SECRET, answers, bentoml_group, mint_token
from loadtests.cpu import Seen
from tests.harness import Server, temporary_database

MB = 1024 * 1024


@dataclass(frozen=True)
class Memory:
    placement: str
    group: str
    processes: int
    rss_mb: float
    """Per process (mean)."""
    uss_mb: float
    """Per process (mean): memory only it uses."""
    pss_mb: float
    """Summed over the group's processes: shared pages divided among their users."""


def measure(server: Server, placement: str) -> list[Memory]:
    groups: dict[str, list[Any]] = {}
    for p in server.processes():
        seen = Seen(ppid=p.ppid(), name=p.name(), cmdline=tuple(p.cmdline()), own=0, children=0)
        groups.setdefault(bentoml_group(seen), []).append(p.memory_full_info())
    return [
        Memory(
            placement,
            group,
            len(infos),
            sum(i.rss for i in infos) / len(infos) / MB,
            sum(i.uss for i in infos) / len(infos) / MB,
            sum(i.pss for i in infos) / MB,
        )
        for group, infos in sorted(groups.items())
    ]


def run(placements: list[tuple[str, dict[str, str]]], requests: int) -> list[Memory]:
    import bentoml

    from settings import get_settings
    from tests.helpers import employee_rows

    model_tag = str(bentoml.models.get(get_settings().model_tag).tag)
    rows = employee_rows()
    work = Path(tempfile.mkdtemp(prefix="attrition-memory-"))
    found: list[Memory] = []
    for name, extra in placements:
        with temporary_database("attrition_memory") as url:
            env = {
                "ATTRITION_JWT_SECRET": SECRET,
                "ATTRITION_DATA_DIR": str(work / f"data-{name}"),
                "ATTRITION_MODEL_TAG": model_tag,
                "ATTRITION_DATABASE_URL": url,
                **extra,
            }
            token = mint_token(env)
            server = Server("service:AttritionService", env, log=work / f"{name}.log")
            try:
                sent = 0
                while sent < requests:  # warm: every worker allocates what serving needs
                    batch = rows[sent % len(rows) :][: min(200, requests - sent)]
                    answers(server.url, batch, token)
                    sent += len(batch)
                found += measure(server, name)
            finally:
                server.stop()
    return found


def render(found: list[Memory]) -> str:
    lines = [
        "| placement | process group | processes | RSS MB each | USS MB each | PSS MB (group) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for m in found:
        lines.append(
            f"| {m.placement} | {m.group} | {m.processes} | {m.rss_mb:.0f} | {m.uss_mb:.0f} "
            f"| {m.pss_mb:.0f} |"
        )
    totals: dict[str, float] = {}
    for m in found:
        totals[m.placement] = totals.get(m.placement, 0.0) + m.pss_mb
    lines += ["", *(f"- {p}: {t:.0f} MB PSS in all" for p, t in totals.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.memory", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="predictions sent first")
    parser.add_argument("--challenger", help="also measure each placement with this challenger")
    args = parser.parse_args(argv)
    placements = [("service", {}), ("inline", {"ATTRITION_MODEL_PLACEMENT": "inline"})]
    if args.challenger:
        with_challenger = {"ATTRITION_CHALLENGER_TAG": args.challenger}
        placements += [(f"{name}+challenger", {**env, **with_challenger})
                       for name, env in list(placements)]  # fmt: skip
    print(render(run(placements, args.requests)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
