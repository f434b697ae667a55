"""A fault test that fails is named in docs/reliability-results.md (``make test-faults``), with the
first line of what stopped it and the run id that draws the same schedule and traffic again: the
document shows the runs that did not pass as well as those that did."""

from __future__ import annotations

import pytest
from orderops_tools import faultreport


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when == "call":
        message = report.longrepr.reprcrash.message if hasattr(report.longrepr, "reprcrash") else str(report.longrepr)
        faultreport.record_failure(report.nodeid, message, run_id=item.funcargs.get("run_id"))
