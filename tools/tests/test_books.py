"""`orderops check books` on a real broker: with nothing to compare it fails and says so (a check
of no orders proves nothing). The fault suite runs it on a whole simulated run with faults."""

from __future__ import annotations

import pytest
from orderops_tools.testing import orderops_cli

pytestmark = pytest.mark.broker


def test_the_books_check_fails_when_it_compared_nothing(catalog_topics, run_id):
    checked = orderops_cli(catalog_topics, "check", "books", "--instance", f"none{run_id}", "--json")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"none{run_id}-orders-changelog" in checked.stderr and "Nothing compared" in checked.stderr
