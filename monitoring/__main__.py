"""python -m monitoring report: drift, data quality, fairness and realized performance of a
window of the inference log, as HTML with plots and a JSON summary (also stored in the database
for GET /monitoring/latest and /metrics)."""

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from monitoring.fairness import DEFAULT_ADVERSE
from monitoring.privacy import MIN_GROUP_SIZE

DEFAULT_DAYS = 7


def when(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} needs a timezone offset, e.g. 2026-11-01T00:00:00Z"
        )
    return value


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number >= 1")
    return value


def whole_days(days: int, now: datetime) -> tuple[datetime, datetime]:
    """The `days` complete UTC days before `now`'s day: [00:00 UTC `days` days ago, 00:00 UTC
    today). A daily job reports the same day whenever that day it starts: no gap, no overlap."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days), today


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("report", help="build the report of a window of the log")
    run.add_argument(
        "--since", type=when, help=f"inclusive start (default: {DEFAULT_DAYS} days before --until)"
    )
    run.add_argument("--until", type=when, help="exclusive end (default: now)")
    run.add_argument("--days", type=positive, help="instead of --since/--until: the last DAYS "
                     "complete UTC days, until 00:00 UTC today (the daily CronJob's window)")  # fmt: skip
    run.add_argument("--model-tag", help="model whose predictions and training data to compare "
                     "(default: ATTRITION_MODEL_TAG, resolved in the model store)")  # fmt: skip
    run.add_argument(
        "--out", type=Path, default=Path("reports/monitoring"), help="folder for the HTML and JSON"
    )
    run.add_argument(
        "--no-store", action="store_true", help="do not store the summary in the database"
    )
    run.add_argument("--min-group-size", type=positive, default=MIN_GROUP_SIZE, metavar="K",
                     help="suppress every statistic over fewer than K rows, in the stored summary "
                     f"and the files (default {MIN_GROUP_SIZE})")  # fmt: skip
    run.add_argument("--adverse-outcome", choices=["Yes", "No"], default=DEFAULT_ADVERSE,
                     help="the label the four-fifths rule treats as adverse (default "
                     f"{DEFAULT_ADVERSE}: a Yes brings a retention conversation); both directions "
                     "are reported either way")  # fmt: skip
    args = parser.parse_args(argv)
    if args.days is not None and (args.since or args.until):
        parser.error("--days replaces --since and --until")

    # Set before BentoML is imported: the job only reads the model store, it reports nothing.
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    from sqlmodel import Session

    from monitoring.render import render
    from monitoring.report import build, empty_log, load_reference
    from persistence.db import make_engine
    from persistence.reports import read_log, read_outcomes, save_report
    from settings import get_settings

    started = time.perf_counter()
    settings = get_settings()
    if args.days is not None:
        since, until = whole_days(args.days, datetime.now(UTC))
    else:
        until = args.until or datetime.now(UTC)
        since = args.since or until - timedelta(days=DEFAULT_DAYS)
    if since >= until:
        parser.error("--since must be before --until")
    reference = load_reference(args.model_tag or settings.model_tag)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        log = read_log(engine=engine, since=since, until=until, model_tag=reference.model_tag)
        if log.empty:
            log = empty_log()
        outcomes = read_outcomes(
            engine=engine, since=since, until=until, model_tag=reference.model_tag
        )
        read_seconds = time.perf_counter() - started
        report = build(log=log, outcomes=outcomes, reference=reference, since=since, until=until,
                       min_group_size=args.min_group_size, adverse=args.adverse_outcome)  # fmt: skip
        summary = report.summary()
        summary["seconds_read"] = round(read_seconds, 2)
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        html_path = args.out / f"monitoring-{stamp}.html"
        json_path = args.out / f"monitoring-{stamp}.json"
        html_path.write_text(render(report, log[log["route"] != "/predict/attrition/what-if"]))
        summary["seconds_total"] = round(time.perf_counter() - started, 2)
        json_path.write_text(json.dumps(summary, indent=2, default=str))
        if not args.no_store:
            with Session(engine) as session:
                save_report(session=session, model_tag=reference.model_tag,
                            summary=json.loads(json.dumps(summary, default=str)))  # fmt: skip
    finally:
        engine.dispose()
    drift = summary["drift"]
    print(
        f"{summary['rows']} rows of {reference.model_tag} from {since.isoformat()} until "
        f"{until.isoformat()}: {len(drift['drifted_features'])} drifted features "
        f"({', '.join(drift['drifted_features']) or 'none'}), lowest four-fifths ratio "
        f"{summary['fairness']['lowest_ratio']} (shares labelled "
        f"{summary['fairness']['compared_rate']}), {summary['performance']['n_outcomes']} outcomes; "
        f"{summary['seconds_total']} s\n{html_path}\n{json_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
