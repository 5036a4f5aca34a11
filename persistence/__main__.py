"""python -m persistence: migrations, retention, erasure and dead letters of the inference log.

  migrate                                   apply pending database migrations
  prune [--days N]                          delete predictions older than N days
                                            (default ATTRITION_LOG_RETENTION_DAYS)
  erase --subject S | --employee-ref R      delete one subject's or one employee's predictions
  erasures                                  list recorded prunes and erasures
  dead-letters list | retry                 show, or write again, the records the database refused

prune and erase take --by (who asks; default: this OS user), --reason (e.g. a ticket number)
and --dry-run (count only).
"""

import argparse
import getpass
import sys
from collections import defaultdict
from typing import Any

from persistence.db import current_revision, make_engine, upgrade
from persistence.dead_letters import DeadLetters
from persistence.inference_log import directory
from settings import Settings, get_settings


def dead_letters(settings: Settings) -> DeadLetters:
    return DeadLetters(directory(settings.data_dir) / "dead-letters.jsonl")


def backlog_warning(settings: Settings) -> str | None:
    from persistence.wal import waiting_records

    waiting = waiting_records(directory(settings.data_dir) / "wal")
    if not waiting:
        return None
    return (
        f"note: {waiting} records in {directory(settings.data_dir)}/wal are not in the database"
        " yet; run again once /health shows no backlog to cover them too"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m persistence",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply pending migrations")
    who = argparse.ArgumentParser(add_help=False)
    who.add_argument("--by", default=getpass.getuser(), help="who asks (recorded)")
    who.add_argument("--reason", help="why, e.g. a ticket or request number (recorded)")
    who.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    prune = sub.add_parser("prune", parents=[who], help="delete predictions past retention")
    prune.add_argument("--days", type=int, help="default: ATTRITION_LOG_RETENTION_DAYS")
    erase = sub.add_parser("erase", parents=[who], help="delete one person's predictions")
    target = erase.add_mutually_exclusive_group(required=True)
    target.add_argument("--subject", help="a token subject (an API user)")
    target.add_argument("--employee-ref", help="an employee_ref sent with predictions")
    sub.add_parser("erasures", help="list recorded prunes and erasures")
    dead = sub.add_parser("dead-letters", help="records the database refused")
    dead.add_argument("action", choices=["list", "retry"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = get_settings()
    url = settings.sqlalchemy_url
    if args.command == "migrate":
        upgrade(url)
        print(f"database at revision {current_revision(url)}")
        return 0
    engine = make_engine(url)
    try:
        return COMMANDS[args.command](args, settings, engine)
    finally:
        engine.dispose()


def run_prune(args: argparse.Namespace, settings: Settings, engine: Any) -> int:
    from persistence.retention import cutoff, prune

    days = args.days or settings.log_retention_days
    if days is None:
        print("no retention: ATTRITION_LOG_RETENTION_DAYS is unset and no --days given")
        return 0
    before = cutoff(days)
    out = prune(engine=engine, dead_letters=dead_letters(settings), before=before,
                requested_by=args.by, reason=args.reason, dry_run=args.dry_run)  # fmt: skip
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {out.rows} predictions created before {before.isoformat()}"
          f" ({len(out.dropped)} monthly partitions dropped whole) and {out.dead_letters} dead letters")  # fmt: skip
    return 0


def run_erase(args: argparse.Namespace, settings: Settings, engine: Any) -> int:
    from persistence.retention import ErasureKind, erase

    kind: ErasureKind = "subject" if args.subject is not None else "employee_ref"
    value = args.subject if args.subject is not None else args.employee_ref
    out = erase(engine=engine, dead_letters=dead_letters(settings), kind=kind, value=value,
                requested_by=args.by, reason=args.reason, dry_run=args.dry_run)  # fmt: skip
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {out.rows} predictions and {out.dead_letters} dead letters with that {kind}")
    if note := backlog_warning(settings):
        print(note)
    return 0


def run_erasures(args: argparse.Namespace, settings: Settings, engine: Any) -> int:
    from persistence.retention import erasures

    for e in erasures(engine=engine):
        what = (
            f"created_before={e.created_before.isoformat()}"
            if e.created_before
            else f"{e.filter_kind} sha256={e.filter_sha256}"
        )
        print(f"{e.at.isoformat()}  by={e.requested_by}  {what}  rows={e.rows}"
              f"  dead_letters={e.dead_letters}  reason={e.reason or '-'}")  # fmt: skip
    return 0


def run_dead_letters(args: argparse.Namespace, settings: Settings, engine: Any) -> int:
    letters = dead_letters(settings)
    if args.action == "list":
        for entry in letters.load():
            v = entry.values()
            print(f"{v.get('id')}  created_at={v.get('created_at')}  subject={v.get('subject')!r}"
                  f"  refused at {entry.at}: {entry.error}")  # fmt: skip
        print(f"{letters.count()} dead letters in {letters.path}")
        return 0
    return retry(letters, settings)


def retry(letters: DeadLetters, settings: Settings) -> int:
    """Write the dead letters again (insert-or-ignore); keep the ones still refused."""
    from persistence.sinks import make_sink, write_isolating

    by_columns: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for entry in letters.load():  # the database work happens outside the file's lock
        by_columns[entry.columns].append(entry.line)
    sink = make_sink(settings.sqlalchemy_url)
    refused: dict[tuple[tuple[str, ...], str], str] = {}
    tried: set[tuple[tuple[str, ...], str]] = set()
    try:
        for columns, lines in by_columns.items():
            data = "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")
            for line, error in write_isolating(sink, columns, data):
                refused[(columns, line)] = error
            tried.update((columns, line) for line in lines)
    finally:
        sink.close()
    with letters.editing() as entries:
        # Entries added meanwhile were not tried: they stay, like the refused ones.
        entries[:] = [
            e for e in entries if (e.columns, e.line) not in tried or (e.columns, e.line) in refused
        ]
    written = len(tried) - len(refused)
    print(f"{written} dead letters written, {len(refused)} still refused")
    for (_, line), error in list(refused.items())[:20]:
        print(f"  {line.split(chr(9), 1)[0]}: {error}")
    return 0 if not refused else 1


COMMANDS = {
    "prune": run_prune,
    "erase": run_erase,
    "erasures": run_erasures,
    "dead-letters": run_dead_letters,
}

if __name__ == "__main__":
    sys.exit(main())
