"""The engine: commands in, events out, and the fold that gives the state.

``commands`` (what a user does to goals) and ``submission`` (a new goal) turn
requests into events; ``state`` folds the log into the state of every goal;
``decide`` and ``dag`` are the scheduler's pure decisions; ``scheduler``,
``worker``, ``context`` and ``lock`` are the processes and their powers, and
``handlers`` the contract a task handler implements.

May import: ``blackboard.log``, ``blackboard.telemetry``, ``blackboard.errors``,
``blackboard.ids``. Not the runtime or the CLI, and none of projections/,
agents/, replay/. ``state``, ``decide`` and ``dag`` are pure.
"""
