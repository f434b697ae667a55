"""Dead-letter records: a message a processor could not decode or process, bytes untouched.

The value and key are the original bytes and the original headers are kept; these headers are
added so an on-call engineer can find the cause and re-drive the message:
``origin-topic``, ``origin-partition``, ``origin-offset``, ``error``, ``error-class``,
``service``, ``failed-at`` (ISO 8601, UTC).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from orderops.codec.avro import DecodeError

ORIGIN_TOPIC = "origin-topic"
ORIGIN_PARTITION = "origin-partition"
ORIGIN_OFFSET = "origin-offset"
ERROR = "error"
ERROR_CLASS = "error-class"
SERVICE = "service"
FAILED_AT = "failed-at"
ADDED_HEADERS = (ORIGIN_TOPIC, ORIGIN_PARTITION, ORIGIN_OFFSET, ERROR, ERROR_CLASS, SERVICE, FAILED_AT)
MAX_ERROR_BYTES = 4000


def error_class(error: BaseException) -> str:
    """Stable category for metrics and triage: the decode reason, the error's own ``reason``
    (e.g. ``delivery-failed``), or ``processing-error``."""
    if isinstance(error, DecodeError):
        return error.reason
    return getattr(error, "reason", None) or "processing-error"


def dead_letter_headers(
    original: Iterable[tuple[str, bytes]] | None,
    *,
    topic: str,
    partition: int,
    offset: int,
    error: BaseException,
    service: str,
    failed_at: datetime | None = None,
) -> list[tuple[str, bytes]]:
    moment = failed_at or datetime.now(UTC)
    message = f"{type(error).__name__}: {error}".encode()[:MAX_ERROR_BYTES]
    kept = [(k, v) for k, v in (original or []) if k not in ADDED_HEADERS]
    return [
        *kept,
        (ORIGIN_TOPIC, topic.encode()),
        (ORIGIN_PARTITION, str(partition).encode()),
        (ORIGIN_OFFSET, str(offset).encode()),
        (ERROR, message),
        (ERROR_CLASS, error_class(error).encode()),
        (SERVICE, service.encode()),
        (FAILED_AT, moment.isoformat(timespec="milliseconds").encode()),
    ]


# -- the redrive ledger (``<processor>.redrives``, compacted): which dead letters were sent back ---

def redrive_entry(dlq: str, partition: int, offset: int, origin: str, at: datetime) -> tuple[bytes, bytes]:
    """The ledger's key and value for a dead letter re-driven to ``origin``: keyed by its place in
    the dead-letter topic, so each is sent back once."""
    return f"{partition}:{offset}".encode(), json.dumps(
        {"dlq": dlq, "partition": partition, "offset": offset, "origin": origin, "at": at.isoformat()}).encode()


def read_redrive_entry(key: str, value: bytes) -> dict[str, Any]:
    """A ledger record as ``redrive_entry`` writes it, or ``ValueError``: bytes from anywhere else
    (by hand, by a bug) must not mark a dead letter as sent back."""
    try:
        entry = json.loads(value)
        named = f"{entry['partition']}:{entry['offset']}"
        dlq = entry["dlq"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"not a redrive record ({type(exc).__name__})") from None
    if named != key or not isinstance(dlq, str) or not dlq.endswith(".dlq"):
        raise ValueError(f"a redrive record of {dlq}[{named}] under key {key}")
    return dict(entry)
