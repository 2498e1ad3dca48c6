"""The log: what a fact is and where it is kept.

Events (the catalogue), their subjects and headers, the wire codec, redaction
of what gets recorded, the JetStream event store and the embedded nats-server.
Everything else in Blackboard is derived from what lives here.

May import: ``blackboard.errors``, ``blackboard.ids``. Nothing above it (the
engine, the runtime, the CLI) and none of projections/, agents/, replay/.
``events``, ``subjects``, ``codec`` and ``redact`` are pure (no nats, no clock).
"""
