"""`python -m moodtunes.migrations upgrade [REVISION]`: the schema step of the production migrate job.

It lives in the shared package so every service image can run it without the `moodtunes` CLI
(packages/moodtunes-cli, which carries the local stack and is never installed in an image).
"""

from __future__ import annotations

import argparse
import sys

from moodtunes import migrations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moodtunes.migrations",
        description=(
            "Alembic migrations of the moodtunes database, as $DATABASE_OWNER_URL (else $DATABASE_URL); "
            "then $DATABASE_URL's role, when it is another, gets row rights only."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("upgrade", help="apply migrations up to REVISION")
    up.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    args = parser.parse_args(argv)
    migrations.upgrade(revision=args.revision)
    print(f"database at {args.revision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
