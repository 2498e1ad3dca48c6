"""The engine: commands in, events out, and the fold that gives the state.

``commands`` (what a user does to goals) and ``submission`` (a new goal) turn
requests into events; ``state`` folds the log into the state of every goal;
``decide`` and ``dag`` are the scheduler's pure decisions, ``attempts`` the
worker's; ``scheduler``, ``worker`` and ``runs`` are the processes, and
``context`` (the ``TaskContext`` Protocol and the worker's implementation)
and ``handlers`` the contract a task handler works with.

May import: ``blackboard.log`` (the engine reaches the log, the work queue and
the leader lock only through ``blackboard.log.ports``), ``blackboard.telemetry``,
``blackboard.errors``, ``blackboard.ids``. Not nats, not the runtime or the
CLI, and none of projections/, agents/, replay/. ``state``, ``decide``,
``dag`` and ``attempts`` are pure.
"""
