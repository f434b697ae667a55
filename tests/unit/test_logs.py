"""Structured logs: with ORDEROPS_LOG_FORMAT=json each line is one JSON object with the processor, and,
while a record is applied, its topic, partition, offset and order id."""

from __future__ import annotations

import io
import json
import logging
import logging.config

import pytest

from orderops.ops.logs import logging_config
from orderops.runtime.batch import APPLYING


def test_a_line_logged_while_a_record_is_applied_says_which_record_and_order(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    config = logging_config("fulfillment", "info", "json")
    handlers, level = logging.root.handlers[:], logging.root.level
    try:
        logging.config.dictConfig(config)
        log = logging.getLogger("orderops.test")
        log.info("starting")
        token = APPLYING.set(("warehouse.events", 3, 41, b"o-17"))
        try:
            log.warning("line %s of order %s is short", "l1", "o-17")
        finally:
            APPLYING.reset(token)
        log.info("idle")
    finally:
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["starting", "line l1 of order o-17 is short", "idle"]
    assert all(line["processor"] == "fulfillment" and line["logger"] == "orderops.test" and line["time"]
               for line in lines)
    applied = lines[1]
    assert (applied["level"], applied["topic"], applied["partition"], applied["offset"], applied["order_id"]) == (
        "WARNING", "warehouse.events", 3, 41, "o-17")
    assert "topic" not in lines[0] and "order_id" not in lines[2]


def test_text_keeps_fausts_lines_and_anything_else_is_refused():
    assert logging_config("timeline", "info", "text") is None
    with pytest.raises(ValueError, match="ORDEROPS_LOG_FORMAT must be one of text, json"):
        logging_config("timeline", "info", "xml")
