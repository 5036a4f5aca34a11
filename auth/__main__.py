"""python -m auth: manage users and mint service-account tokens.

Every command uses the settings the server uses (ATTRITION_* variables and the project's .env;
with neither a JWT key nor ATTRITION_DEV_MODE, the development secret `make serve` keeps in the
data folder). Any failure is one line on stderr and exit code 2.
"""

import argparse
import getpass
import re
import sys
from typing import NoReturn

from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from auth.tokens import create_token
from auth.users import (
    UserError,
    create_user,
    delete_user,
    get_user,
    list_users,
    revoke_tokens,
    set_active,
)
from persistence.db import make_engine, upgrade
from persistence.models import ROLES, UserCreate
from settings import Settings, get_settings

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
EXIT_ERROR = 2


class CliError(Exception):
    """A failure to report as one line."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see: python -m auth --help)")


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_ERROR)


def duration(text: str) -> int:
    """'90', '30m', '12h', '7d' -> seconds."""
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not match or int(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 30m, 12h, 7d)")
    return int(match.group(1)) * UNITS[match.group(2) or "s"]


def read_password(stdin: bool) -> str:
    if stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise UserError("passwords differ")
    return first


def field_errors(exc: ValidationError) -> str:
    """Validation errors by field; a settings error names its environment variable."""
    env = exc.title == Settings.__name__
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{'ATTRITION_' + loc.upper() if env else loc}: {e['msg']}")
    return "; ".join(parts)


def shown_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse is shown as text
        return repr(url.split("@")[-1])


def one_line(exc: BaseException, url: str) -> str:
    """A failure as one line: validation errors by field, database errors without the SQL."""
    if isinstance(exc, ValidationError):
        return field_errors(exc)
    if isinstance(exc, SQLAlchemyError):
        cause = getattr(exc, "orig", None) or exc
        return f"database {shown_url(url)}: {first_line(cause)}"
    return first_line(exc)


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def build_parser() -> Parser:
    parser = Parser(prog="python -m auth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser(
        "create-user", help="create a user; the password is read from a prompt or stdin"
    )
    p.add_argument("name")
    p.add_argument("--role", action="append", choices=ROLES, required=True, help="repeat for more")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    sub.add_parser("list-users", help="list users, roles and state")
    for name in ("disable-user", "enable-user"):
        sub.add_parser(name, help=f"{name.split('-')[0]} a user").add_argument("name")
    sub.add_parser("delete-user", help="delete a user (their tokens stop working)").add_argument(
        "name"
    )
    sub.add_parser(
        "revoke-tokens", help="end every token issued to a user so far (logins still work)"
    ).add_argument("name")
    p = sub.add_parser("token", help="mint a token for an existing, active user")
    p.add_argument("name")
    p.add_argument("--ttl", type=duration, default=None, help="lifetime: 3600, 30m, 12h, 7d")
    return parser


def run(args: argparse.Namespace, settings: Settings) -> None:
    if args.command == "token":
        minting = settings.for_minting()  # checked before the database is touched
    upgrade(settings.sqlalchemy_url)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with Session(engine) as session:
            if args.command == "create-user":
                user_in = UserCreate(
                    username=args.name, roles=args.role, password=read_password(args.password_stdin)
                )
                user = create_user(session=session, user_in=user_in)
                print(f"created {user.username} with roles {','.join(user.roles)}")
            elif args.command == "list-users":
                for u in list_users(session=session):
                    state = "active" if u.is_active else "disabled"
                    last = u.last_login_at.isoformat() if u.last_login_at else "-"
                    print(f"{u.username:<24} {','.join(u.roles):<24} {state:<9} last login {last}")
            elif args.command in ("disable-user", "enable-user"):
                user = set_active(
                    session=session, username=args.name, active=args.command == "enable-user"
                )
                print(f"{user.username} is now {'active' if user.is_active else 'disabled'}")
            elif args.command == "delete-user":
                delete_user(session=session, username=args.name)
                print(f"deleted {args.name}")
            elif args.command == "revoke-tokens":
                user = revoke_tokens(session=session, username=args.name)
                print(f"tokens of {user.username} issued before {user.tokens_valid_after} revoked")
            elif args.command == "token":
                found = get_user(session=session, username=args.name)
                if found is None or not found.is_active:
                    raise UserError(f"no active user {args.name!r}")
                token = create_token(
                    minting, subject=found.username, roles=found.roles, ttl_seconds=args.ttl
                )
                print(token)
                if minting.dev_mode and not settings.dev_mode:
                    print(
                        f"note: signed with the development secret in {settings.data_dir}",
                        file=sys.stderr,
                    )
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    url = "(settings not loaded)"
    try:
        settings = get_settings()
        url = settings.sqlalchemy_url
        run(args, settings)
    except KeyboardInterrupt:
        fail("interrupted")
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line, never a traceback
        fail(one_line(exc, url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
