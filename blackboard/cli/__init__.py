"""The ``bb`` command line: the front door. Thin: parse, call, print.

Each command imports what it needs inside its body, so ``bb tail`` does not pay
for the model SDKs or DuckDB. Errors the user can act on are one line on
stderr and a non-zero exit code, never a traceback.
"""

import importlib
import sys

from blackboard.cli.common import app

# Importing a group registers its commands; this order is the help's order
# (getting started, operate, inspect, deploy and measure).
GROUPS = (
    "goals",
    "query",
    "trace",
    "events",
    "acting",
    "governance",
    "deploy",
    "localmodel",
    "bench",
)
for _group in GROUPS:
    importlib.import_module(f"blackboard.cli.{_group}")

__all__ = ["GROUPS", "app", "main"]


def main() -> None:
    """Entry point of the ``bb`` console script.

    A path the system refuses (missing, a directory, no permission, a file
    where a directory should be) is the user's to fix: one line naming it.
    """
    try:
        app(standalone_mode=True)
    except OSError as e:
        path = e.filename if e.filename is not None else ""
        what = f"{path}: " if path else ""
        print(f"bb: error: {what}{e.strerror or e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
