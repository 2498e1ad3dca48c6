"""``python -m blackboard.cli``: the same as the ``bb`` command."""

from blackboard.cli import main

main()
