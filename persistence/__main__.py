"""python -m persistence: migrations, retention, erasure and dead letters of the inference log.

  migrate                                   apply pending database migrations
  prune [--days N]                          delete predictions older than N days
                                            (default ATTRITION_LOG_RETENTION_DAYS)
  erase --subject S | --employee-ref R      delete one subject's or one employee's predictions
  erasures                                  list recorded prunes and erasures
  dead-letters list | retry                 show, or write again, the records the database refused
  promote [--to TAG] [--report ID]          the challenger (default ATTRITION_CHALLENGER_TAG)
                                            answers from now on; the served model is its shadow
  rollback                                  the model that answered before the last change
                                            answers again
  model-changes                             list recorded promotions and rollbacks

promote and rollback take --by and --reason and record the comparison they relied on: the
monitoring report given with --report (default: the latest) and its comparison section.

prune and erase take --by (who asks; default: this OS user), --reason (e.g. a ticket number)
and --dry-run (count only). Outcomes and dead letters of the deleted predictions go with them.
Every command first moves the dead letters of this ATTRITION_DATA_DIR into the database.
"""

import argparse
import getpass
import sys
import uuid
from typing import Any

from persistence.db import current_revision, make_engine, upgrade
from persistence.inference_log.dead_letters import DeadLetters
from persistence.inference_log.writer import directory
from persistence.retention import Tombstones
from settings import Settings, get_settings


def dead_letters(settings: Settings, engine: Any) -> DeadLetters:
    """This data folder's dead letters, moved into the database (a note if they cannot be)."""
    letters = DeadLetters(
        directory(settings.data_dir) / "dead-letters.jsonl", tombstones=Tombstones(engine=engine)
    )
    try:
        letters.move()
    except OSError as exc:
        print(f"note: cannot read {letters.path}: {exc}")
    return letters


def not_in_database(settings: Settings, letters: DeadLetters) -> list[str]:
    """What this folder holds that the database does not have yet."""
    from persistence.inference_log.wal import waiting_records

    notes = []
    waiting = waiting_records(directory(settings.data_dir) / "wal")
    if waiting:
        notes.append(f"{waiting} records in {directory(settings.data_dir)}/wal")
    if letters.local_count():
        notes.append(f"{letters.local_count()} dead letters in {letters.path}")
    return notes


ERASE_CAVEAT = (
    "note: this command reaches the database and this ATTRITION_DATA_DIR only. Records of other\n"
    "instances not yet in the database (write-ahead backlogs of an instance that could not reach\n"
    "it, dead letters it could not move) arrive later and are checked against this erasure on\n"
    "arrival and removed (see late_copies in `erasures`); an instance whose check fails logs it."
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
    change = argparse.ArgumentParser(add_help=False)
    change.add_argument("--by", default=getpass.getuser(), help="who decides (recorded)")
    change.add_argument("--reason", help="why, e.g. a ticket number (recorded)")
    change.add_argument(
        "--report", type=uuid.UUID, help="monitoring report relied on (default: the latest)"
    )
    promote = sub.add_parser("promote", parents=[change], help="make the challenger answer")
    promote.add_argument("--to", help="default: ATTRITION_CHALLENGER_TAG")
    sub.add_parser("rollback", parents=[change], help="the previous model answers again")
    sub.add_parser("model-changes", help="list recorded promotions and rollbacks")
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
    dead_letters(settings, engine)
    out = prune(engine=engine, before=before, requested_by=args.by, reason=args.reason,
                dry_run=args.dry_run)  # fmt: skip
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {out.rows} predictions created before {before.isoformat()}"
          f" ({len(out.dropped)} monthly partitions dropped whole), {out.outcomes} outcomes"
          f" and {out.dead_letters} dead letters")  # fmt: skip
    return 0


def run_erase(args: argparse.Namespace, settings: Settings, engine: Any) -> int:
    from persistence.retention import ErasureKind, erase

    kind: ErasureKind = "subject" if args.subject is not None else "employee_ref"
    value = args.subject if args.subject is not None else args.employee_ref
    if not value:
        print(f"error: an empty {kind} names nobody", file=sys.stderr)
        return 2
    letters = dead_letters(settings, engine)
    out = erase(engine=engine, kind=kind, value=value, requested_by=args.by, reason=args.reason,
                dry_run=args.dry_run)  # fmt: skip
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {out.rows} predictions, {out.outcomes} outcomes and {out.dead_letters}"
          f" dead letters with that {kind}")  # fmt: skip
    if out.recorded_by_erased:
        verb = "would replace" if args.dry_run else "replaced"
        print(f"{verb} the subject's name on {out.recorded_by_erased} outcomes it recorded"
              " for other subjects' predictions")  # fmt: skip
    for note in not_in_database(settings, letters):
        print(f"note: {note} are not in the database yet: run erase again once they are")
    print(ERASE_CAVEAT)
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
              f"  outcomes={e.outcomes}  recorded_by_erased={e.recorded_by_erased}"
              f"  dead_letters={e.dead_letters}  late_copies={e.late_copies}"
              f"  reason={e.reason or '-'}")  # fmt: skip
    return 0


def run_dead_letters(args: argparse.Namespace, settings: Settings, engine: Any) -> int:
    from persistence.inference_log.dead_letters import retry, stored

    letters = dead_letters(settings, engine)
    unmoved = letters.local_count()
    notes = [f"{unmoved} dead letters in {letters.path}"] if unmoved else []
    if args.action == "list":
        found = stored(engine=engine)
        for entry in found:
            v = entry.values()
            print(f"{v.get('id')}  created_at={v.get('created_at')}  subject={v.get('subject')!r}"
                  f"  refused at {entry.at.isoformat()}: {entry.error}")  # fmt: skip
        print(f"{len(found)} dead letters in the database")
        for note in notes:
            print(f"note: {note} could not be moved into the database")
        return 0
    out = retry(engine=engine)
    print(f"{out.written} dead letters written, {len(out.refused)} still refused"
          + (f", {out.erased} deleted as their person was erased" if out.erased else ""))  # fmt: skip
    for letter, error in out.refused[:20]:
        print(f"  {letter.values().get('id')}: {error}")
    for note in notes:
        print(f"note: {note} could not be moved into the database")
    return 0 if not out.refused and not notes else 1


def resolved(tag: str) -> str:
    """`tag` with its version, as the service records it, when the model store has it."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        return str(bentoml.models.get(tag).tag)
    except (BentoMLException, ValueError):
        return tag


def run_change(args: argparse.Namespace, settings: Settings, engine: Any) -> int:
    from sqlmodel import Session

    from persistence.model_changes import latest_change, record_change
    from persistence.models import MonitoringReport
    from persistence.reports import latest_report

    with Session(engine) as session:
        latest = latest_change(session=session)
        current = latest.to_tag if latest is not None else resolved(settings.model_tag)
        if args.command == "promote":
            target = args.to or settings.challenger_tag
            if target is None:
                print("error: give --to or set ATTRITION_CHALLENGER_TAG", file=sys.stderr)
                return 2
            target = resolved(target)
        else:
            if latest is None or latest.action == "rollback":
                print("error: no promotion to roll back", file=sys.stderr)
                return 2
            target = latest.from_tag
        if target == current:
            print(f"error: {target} already answers", file=sys.stderr)
            return 2
        report = (
            session.get(MonitoringReport, args.report)
            if args.report
            else latest_report(session=session)
        )
        if args.report and report is None:
            print(f"error: no monitoring report {args.report}", file=sys.stderr)
            return 2
        change = record_change(
            session=session, action=args.command, from_tag=current, to_tag=target,
            changed_by=args.by, reason=args.reason,
            monitoring_report_id=report.id if report else None,
            comparison=report.summary.get("comparison") if report else None,
        )  # fmt: skip
    print(f"{change.at.isoformat()}  {change.action}: {change.from_tag} -> {change.to_tag}"
          f"  (report {change.monitoring_report_id or 'none'})")  # fmt: skip
    if report is None:
        print("note: no monitoring report yet: the change records no comparison")
    return 0


def run_model_changes(args: argparse.Namespace, settings: Settings, engine: Any) -> int:
    from sqlmodel import Session

    from persistence.model_changes import model_changes

    with Session(engine) as session:
        for c in model_changes(session=session):
            print(f"{c.at.isoformat()}  {c.action}  {c.from_tag} -> {c.to_tag}  by={c.changed_by}"
                  f"  report={c.monitoring_report_id or '-'}  reason={c.reason or '-'}")  # fmt: skip
    return 0


COMMANDS = {
    "promote": run_change,
    "rollback": run_change,
    "model-changes": run_model_changes,
    "prune": run_prune,
    "erase": run_erase,
    "erasures": run_erasures,
    "dead-letters": run_dead_letters,
}

if __name__ == "__main__":
    sys.exit(main())
