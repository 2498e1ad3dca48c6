"""Wiring a process: settings, the connection, components run in-process.

``config`` reads ``bb.toml`` and the environment; ``connection`` opens the
store (starting or finding the embedded server); ``inprocess`` runs a
scheduler, workers and a projector inside one process (``bb up``, ``bb demo``,
the tests); ``health`` serves ``/healthz`` and ``/readyz``.

May import: the engine, the log, telemetry, errors and ids. Not the CLI; not
projections/, agents/ or replay/ (a projector is handed in by the caller).
"""
