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


def test_only_a_disagreement_found_by_two_checks_in_a_row_stands():
    from decimal import Decimal

    from orderops_tools.books import Disagreement, standing

    settled = Disagreement("o-1", "card-1", "refunded", Decimal(30), Decimal(30), Decimal(0))
    in_flight = Disagreement("o-2", "card-1", "refunded", Decimal(10), Decimal(10), Decimal(0))
    moved_on = Disagreement("o-3", "card-1", "captured", Decimal(10), Decimal(5), Decimal(5))
    later = Disagreement("o-3", "card-1", "captured", Decimal(10), Decimal(10), Decimal(5))
    assert standing([settled, in_flight, later], [settled, moved_on]) == [settled]
    assert standing([settled], []) == []


async def test_the_books_watch_serves_its_figures_and_counts_a_check_it_could_not_run(catalog_topics, run_id, tmp_path):
    import asyncio
    import os
    import subprocess
    import sys

    import aiohttp
    from orderops_tools.testing import free_port

    port = free_port()
    with open(tmp_path / "books.log", "wb") as log:
        watch = subprocess.Popen([sys.executable, "-m", "orderops_tools.books", "--port", str(port), "--interval", "1",
                                  "--instance", f"none{run_id}"],
                                 env={**os.environ, "KAFKA_BOOTSTRAP": catalog_topics}, stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        metrics = ""
        async with aiohttp.ClientSession() as session:
            for _ in range(60):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                        metrics = await response.text()
                    if "orderops_books_check_failures_total 2.0" in metrics:
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.5)
        assert "orderops_books_check_failures_total 2.0" in metrics, metrics[-2000:]
        assert "orderops_books_disagreements 0.0" in metrics
        assert f"none{run_id}-orders-changelog" in (tmp_path / "books.log").read_text()
    finally:
        watch.kill()
