"""The log: what a fact is and where it is kept.

Events (the catalogue), their subjects and headers, the wire codec, redaction
of what gets recorded; the ports everything above uses (``ports``: the event
store, the work queue, the leader lock), their JetStream adapters (``store``
with ``reading``, ``streams``, ``retry``, ``workqueue``, ``lease``,
``connect``), their in-memory twins (``memory``, ``memory_reads``,
``memory_work``) and the embedded nats-server. Everything else in Blackboard
is derived from what lives here.

May import: ``blackboard.errors``, ``blackboard.ids``. Nothing above it (the
engine, the runtime, the CLI) and none of projections/, agents/, replay/.
``events``, ``subjects``, ``codec``, ``redact``, ``wire`` and ``ports`` are
pure (no nats, no clock); only the JetStream adapters and ``server`` import
nats.
"""
