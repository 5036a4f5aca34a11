"""python -m persistence migrate: apply pending database migrations."""

import sys

from persistence.db import current_revision, upgrade
from settings import get_settings


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["migrate"]:
        print("usage: python -m persistence migrate", file=sys.stderr)
        return 2
    url = get_settings().sqlalchemy_url
    upgrade(url)
    print(f"database at revision {current_revision(url)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
