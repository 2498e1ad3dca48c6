"""The ``bb`` command line: the front door. Thin: parse, call, print.

Each command imports what it needs inside its body, so ``bb tail`` does not pay
for the model SDKs or DuckDB. Errors the user can act on are one line on
stderr and a non-zero exit code, never a traceback.
"""

from blackboard.cli import bench, deploy, events, goals, query, trace
from blackboard.cli.common import app

__all__ = ["app", "bench", "deploy", "events", "goals", "main", "query", "trace"]


def main() -> None:
    """Entry point of the ``bb`` console script."""
    app()


if __name__ == "__main__":
    main()
