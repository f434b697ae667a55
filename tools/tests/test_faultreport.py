"""The fault suite's figures: recorded by a passing test only where FAULT_RESULTS names a file, and
written as a document with the run's machine and sizes."""

from __future__ import annotations

import json

from orderops_tools import faultreport


def test_figures_are_recorded_only_when_asked_and_rendered_with_the_machine(tmp_path, monkeypatch):
    monkeypatch.delenv(faultreport.RESULTS, raising=False)
    faultreport.record("nothing asked", {"orders": 1})  # no file named: nothing happens
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv(faultreport.RESULTS, str(results))
    faultreport.record("a fault test", {"orders": 1200, "faults injected": {"SIGKILL returns": 2}})
    [line] = [json.loads(x) for x in results.read_text().splitlines()]
    assert line["test"] == "a fault test" and line["figures"]["orders"] == 1200

    out = tmp_path / "results.md"
    monkeypatch.setenv("FAULT_ORDERS", "200")
    assert faultreport.main([str(results), "--out", str(out)]) == 0
    text = out.read_text()
    assert "do not edit by hand" in text and "`FAULT_ORDERS`=200" in text and " cores (" in text
    assert "| orders | 1,200 |" in text and "| faults injected | SIGKILL returns: 2 |" in text


def test_a_test_that_did_not_pass_is_named_with_what_stopped_it(tmp_path, monkeypatch):
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv(faultreport.RESULTS, str(results))
    faultreport.record_failure("tests/faults/test_x.py::test_y", "AssertionError: refund commands not answered\nmore",
                               run_id="000e4009")
    out = tmp_path / "results.md"
    assert faultreport.main([str(results), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Did not pass" in text and "`tests/faults/test_x.py::test_y`" in text
    assert "AssertionError: refund commands not answered" in text and "more" not in text
    assert "ORDEROPS_TEST_RUN_ID=000e4009" in text


def test_no_test_writes_nothing(tmp_path):
    empty = tmp_path / "results.jsonl"
    empty.write_text("")
    out = tmp_path / "results.md"
    assert faultreport.main([str(empty), "--out", str(out)]) == 1 and not out.exists()
    assert faultreport.main([str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 1
