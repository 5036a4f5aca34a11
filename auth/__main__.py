"""python -m auth: manage users and mint service-account tokens."""

import argparse
import getpass
import re
import sys

from pydantic import ValidationError
from sqlmodel import Session

from auth.tokens import create_token
from auth.users import UserError, create_user, get_user, list_users, set_active
from persistence.db import make_engine, upgrade
from persistence.models import ROLES, UserCreate
from settings import get_settings

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m auth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "create-user", help="create a user; the password is read from a prompt or stdin"
    )
    p.add_argument("name")
    p.add_argument("--role", action="append", choices=ROLES, required=True, help="repeat for more")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    sub.add_parser("list-users", help="list users, roles and state")
    for name in ("disable-user", "enable-user"):
        sub.add_parser(name).add_argument("name")
    p = sub.add_parser("token", help="mint a token for an existing, active user")
    p.add_argument("name")
    p.add_argument("--ttl", type=duration, default=None, help="lifetime: 3600, 30m, 12h, 7d")
    args = parser.parse_args(argv)

    settings = get_settings()
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
            elif args.command == "token":
                found = get_user(session=session, username=args.name)
                if found is None or not found.is_active:
                    raise UserError(f"no active user {args.name!r}")
                print(
                    create_token(
                        settings, subject=found.username, roles=found.roles, ttl_seconds=args.ttl
                    )
                )
    except (UserError, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
