"""Time the monitoring report on a large log: fill a fresh PostgreSQL database with N logged
predictions (real employees with jitter, scored by the model, a share with outcomes), then run
`python -m monitoring report` on it and print how long each part took.

python -m loadtests.report_bench --rows 100000
"""

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from tests.harness import PROJECT_DIR, temporary_database


def fill(url: str, rows: int, model_tag: str, outcome_share: float, seed: int) -> None:
    """COPY `rows` inferences spread over 30 days (a third in batches) and their outcomes."""
    import bentoml
    import psycopg

    from persistence import partitions
    from persistence.db import upgrade
    from training.data import load_reference
    from training.schema import FEATURES

    upgrade(url)
    rng = np.random.default_rng(seed)
    model = bentoml.models.get(model_tag)
    pipeline = bentoml.sklearn.load_model(model)
    threshold = float(model.info.metadata["threshold"])
    data = load_reference()[list(FEATURES)]
    sample = data.sample(rows, replace=True, random_state=seed).reset_index(drop=True)
    sample["MonthlyIncome"] = (
        (sample["MonthlyIncome"] * rng.uniform(0.95, 1.05, rows)).round().astype(int)
    )
    p = pipeline.predict_proba(sample)[:, 1]
    start = datetime.now(UTC) - timedelta(days=30)
    created = [
        start + timedelta(seconds=float(s)) for s in np.sort(rng.uniform(0, 30 * 86400, rows))
    ]
    inputs = sample.to_dict("records")
    ids = [uuid.uuid4() for _ in range(rows)]
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        # The log's writers make the monthly partitions of the rows they write; so does this.
        partitions.ensure(conn, {partitions.month_of(c) for c in created})
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY inferences (id, created_at, subject, route, model_tag, batch_id, position, inputs,"
                " probability, label, threshold, latency_ms) FROM STDIN"
            ) as copy,
        ):
            for i in range(rows):
                batch = i % 3 == 0
                copy.write_row((
                    ids[i], created[i], "bench", "/predict/attrition/batch" if batch else "/predict/attrition",
                    str(model.tag), uuid.uuid4() if batch else None, 0 if batch else None,
                    json.dumps(inputs[i], default=int), float(p[i]), "Yes" if p[i] >= threshold else "No",
                    threshold, 1.0,
                ))  # fmt: skip
        chosen = rng.choice(rows, int(rows * outcome_share), replace=False)
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY outcomes (id, inference_id, revision, outcome, observed_at, recorded_at, recorded_by)"
                " FROM STDIN"
            ) as copy,
        ):
            for i in chosen:
                left = rng.uniform() < p[i]
                when = created[i] + timedelta(days=1)
                copy.write_row(
                    (uuid.uuid4(), ids[i], 0, "left" if left else "stayed", when, when, "bench")
                )
        conn.commit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.report_bench", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--outcome-share", type=float, default=0.2)
    parser.add_argument(
        "--model-tag", default=os.environ.get("ATTRITION_MODEL_TAG", "attrition:latest")
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "reports" / "report-bench")
    args = parser.parse_args(argv)
    with temporary_database("attrition_report_bench") as url:
        started = time.perf_counter()
        fill(url, args.rows, args.model_tag, args.outcome_share, args.seed)
        print(f"filled {args.rows} rows in {time.perf_counter() - started:.1f} s", flush=True)
        env = {**os.environ, "ATTRITION_DATABASE_URL": url, "BENTOML_DO_NOT_TRACK": "true"}
        since = (datetime.now(UTC) - timedelta(days=31)).isoformat()
        command = [sys.executable, "-m", "monitoring", "report", "--since", since,
                   "--model-tag", args.model_tag, "--out", str(args.out)]  # fmt: skip
        started = time.perf_counter()
        out = subprocess.run(command, env=env, cwd=PROJECT_DIR, capture_output=True, text=True)
        wall = time.perf_counter() - started
        print(out.stdout + out.stderr[-3000:])
        if out.returncode != 0:
            return out.returncode
        summary = json.loads(Path(out.stdout.strip().splitlines()[-1]).read_text())
        print(
            f"report on {summary['rows']} logged rows: {wall:.1f} s wall for the command "
            f"(reading the log {summary['seconds_read']} s, sections {summary['seconds']} s, all with the HTML {summary['seconds_total']} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
