"""How a processor logs: Faust's plain lines by default, one JSON object a line with
``ORDEROPS_LOG_FORMAT=json`` (for a log shipper).

Each JSON line carries the processor, and, while the batch path applies a record (it sets
``APPLYING``), that record's topic, partition and offset and the order id it is keyed by: a line
logged deep in a domain function still says which input it came of. Only ids go into these
fields, never an event's payload: no personal data reaches the logs through them.
"""

from __future__ import annotations

import logging
from typing import Any

from orderops.runtime.batch import APPLYING

FORMATS = ("text", "json")


class RecordContext(logging.Filter):
    """Adds ``processor`` to every record, and ``topic``, ``partition``, ``offset`` and ``order_id``
    while an input record is applied."""

    def __init__(self, processor: str = "") -> None:
        super().__init__()
        self.processor = processor

    def filter(self, record: logging.LogRecord) -> bool:
        record.processor = self.processor
        current = APPLYING.get()
        if current is not None:
            topic, partition, offset, key = current
            record.topic, record.partition, record.offset = topic, partition, offset
            if key is not None:
                record.order_id = key.decode("utf-8", "replace")
        return True


def logging_config(processor: str, level: str, log_format: str) -> dict[str, Any] | None:
    """The ``logging.config.dictConfig`` for ``log_format`` (None: Faust's own plain lines)."""
    if log_format not in FORMATS:
        raise ValueError(f"ORDEROPS_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {log_format!r}")
    if log_format == "text":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"record": {"()": RecordContext, "processor": processor}},
        "formatters": {"json": {"()": "pythonjsonlogger.json.JsonFormatter",
                                "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
                                "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"}}},
        "handlers": {"default": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "json",
                                 "filters": ["record"], "level": level.upper()}},
        "root": {"level": level.upper(), "handlers": ["default"]},
    }
