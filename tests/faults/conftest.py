"""A fault test that fails is named in docs/reliability-results.md (``make test-faults``), with the
first line of what stopped it: the document shows the runs that did not pass as well as those that did."""

from __future__ import annotations

from orderops_tools import faultreport


def pytest_runtest_logreport(report) -> None:
    if report.failed and report.when == "call":
        message = report.longrepr.reprcrash.message if hasattr(report.longrepr, "reprcrash") else str(report.longrepr)
        faultreport.record_failure(report.nodeid, message)
