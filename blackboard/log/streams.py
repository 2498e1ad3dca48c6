"""The JetStream layout: the two streams and the blob bucket, created or checked.

``BB_EVENTS`` takes writes on ``<prefix>.in.evt.>``, stores them under
``<prefix>.evt.>`` and re-publishes what it stored there; ``BB_WORK`` is a
work queue on ``<prefix>.work.*``. A stream that exists with a configuration
that matters differently is reported (``StreamConfigDrift``), never silently
used; an events stream of the older layout (writers on the public subjects) is
moved to the re-published one in place.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import nats.js.errors
from nats.js.api import (
    DiscardPolicy,
    ObjectStoreConfig,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)

from blackboard.errors import StoreError, StreamConfigDrift

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.object_store import ObjectStore

    from blackboard.log.ports import StoreSettings
    from blackboard.log.subjects import Subjects

log = logging.getLogger("blackboard.store")


def events_config(
    name: str, settings: StoreSettings, subjects: Subjects
) -> StreamConfig:
    """The configuration BB_EVENTS must have."""
    return StreamConfig(
        name=name,
        subjects=[subjects.events_in_all],
        # Stored under the public subjects, and re-published there once
        # stored: core subscribers never see a refused write.
        subject_transform=SubjectTransform(
            src=subjects.events_in_all, dest=subjects.events_all
        ),
        republish=RePublish(src=subjects.events_all, dest=subjects.events_all),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        duplicate_window=settings.duplicate_window_s,
        allow_atomic=True,
        allow_direct=True,
        discard=DiscardPolicy.OLD,
    )


def work_config(name: str, settings: StoreSettings, subjects: Subjects) -> StreamConfig:
    """The configuration BB_WORK must have."""
    return StreamConfig(
        name=name,
        subjects=[subjects.work_all],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        duplicate_window=settings.duplicate_window_s,
        max_age=settings.work_max_age_s,
    )


async def ensure_stream(js: JetStreamContext, want: StreamConfig, events: bool) -> None:
    """Create the stream ``want`` describes, or check the one in place.

    ``events``: it is the events stream, which may be of the older layout.
    """
    assert want.name is not None
    try:
        info = await js.stream_info(want.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(want)
        except nats.js.errors.BadRequestError as e:
            # Another process created it between our look and our create.
            if e.err_code != 10058:  # stream name already in use
                raise StoreError(f"cannot create {want.name}: {e}") from e
        else:
            return
        info = await js.stream_info(want.name)
    if events and _older_layout(want, info.config):
        # A stream from before writers moved to the internal subjects:
        # subjects, transform and re-publish can be changed in place, and
        # the stored messages keep their (public) subjects.
        info.config.subjects = want.subjects
        info.config.subject_transform = want.subject_transform
        info.config.republish = want.republish
        log.info("moving stream %s to the re-published layout", want.name)
        info = await js.update_stream(info.config)
    drift = _drift(want, info.config)
    if drift:
        raise StreamConfigDrift(
            f"stream {want.name} exists with a different configuration "
            f"({'; '.join(drift)}); fix or delete it, or use another BB_PREFIX"
        )


async def ensure_blobs(
    js: JetStreamContext, bucket: str, settings: StoreSettings
) -> ObjectStore:
    """The blob bucket, created if missing."""
    try:
        return await js.object_store(bucket)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_object_store(
            bucket,
            config=ObjectStoreConfig(
                bucket=bucket, replicas=settings.replicas, storage=StorageType.FILE
            ),
        )


def _drift(want: StreamConfig, have: StreamConfig) -> list[str]:
    """Differences that matter between the config we need and the one found."""
    out = []
    for name in ("subjects", "retention", "storage", "num_replicas", "allow_atomic"):
        w, h = getattr(want, name), getattr(have, name)
        if name == "allow_atomic":
            w, h = bool(w), bool(h)
        if w != h:
            out.append(f"{name}: want {w!r}, found {h!r}")
    for name in ("subject_transform", "republish"):
        w, h = _mapping(getattr(want, name)), _mapping(getattr(have, name))
        if w != h:
            out.append(f"{name}: want {w!r}, found {h!r}")
    return out


def _mapping(value: SubjectTransform | RePublish | None) -> tuple[str, str] | None:
    if value is None or not value.src:
        return None
    return value.src, value.dest or ""


def _older_layout(want: StreamConfig, have: StreamConfig) -> bool:
    """Whether ``have`` is the events stream as created before re-publishing."""
    assert want.subject_transform is not None
    return (
        have.subjects == [want.subject_transform.dest]
        and _mapping(have.subject_transform) is None
        and _mapping(have.republish) is None
    )


def partitions_config(
    name: str, settings: StoreSettings, subjects: Subjects, source: str, count: int
) -> StreamConfig:
    """The stream that copies the events stream, each event under its partition.

    Sourced from ``source`` with a subject transform that puts the goal's
    partition (``{{partition(count,1)}}`` of the goal token) in front, so one
    partition's scheduler reads its own filter and the server, not the
    client, leaves out the other partitions' events.
    """
    return StreamConfig(
        name=name,
        sources=[
            StreamSource(
                name=source,
                subject_transforms=[
                    SubjectTransform(
                        src=subjects.events_each, dest=subjects.partitioned(count)
                    )
                ],
            )
        ],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        allow_direct=True,
        discard=DiscardPolicy.OLD,
    )
