"""Every route every processor serves needs a token, but for a short documented list, and a lead's
route refuses an agent.

The routes are not listed here: each processor's app is built as its ``__main__`` builds it, in a
process of its own, and its web server's router says what it serves (Faust's built-in pages
included). Each route is then called on the processor running as a real process against the broker:
with no token, with a wrong one, and as an agent. A route nobody declared fails the test, so a page
added later is either guarded or added to the open list below and to docs/security.md.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import aiohttp
import pytest
from orderops_tools.testing import start_processors

from orderops.model.catalog import PROCESSORS

pytestmark = pytest.mark.broker

# What answers without a token (docs/security.md, "Open without a token"): health for the
# orchestrator, counts for Prometheus, the API's description, and the console's static page, which
# holds no data (it asks for a token before it calls the API).
OPEN = {"/healthz", "/metrics", "/openapi.json", "/"}
PROCESSOR_ORDER_PAGE = re.compile(r"^/orders/\{order_id\}(/[a-z-]+)?$")  # each processor's read API: agents
SAMPLE = {"order_id": "routes-o-1", "escalation_id": "routes-o-1:repeat-contact:c-1", "return_id": "r-1", "tag": "vip"}

LIST_ROUTES = """
import importlib, json, sys
service = importlib.import_module(sys.argv[1] + ".__main__").service
service.app.web.init_server()
print(json.dumps(sorted({(route.method, route.resource.canonical) for route in service.app.web.web_app.router.routes()})))
"""


def served_routes(processor: str) -> list[tuple[str, str]]:
    """(method, path template) of every route the processor's web server serves."""
    done = subprocess.run([sys.executable, "-c", LIST_ROUTES, processor.replace("-", "_")], capture_output=True,
                          text=True, timeout=120, check=True)
    return [tuple(route) for route in json.loads(done.stdout.strip().splitlines()[-1])]


def declared_role(processor: str, method: str, path: str) -> str | None:
    """The role the route is declared to need: the timeline's from its API contract, every other
    processor's order page agent; ``None`` for a route nobody declared."""
    if processor == "timeline":
        from timeline import api

        endpoint = api.BY_ROUTE.get((method.lower(), path))
        return endpoint.role if endpoint else None
    return "agent" if method == "GET" and PROCESSOR_ORDER_PAGE.match(path) else None


@pytest.fixture(scope="module")
def processors(catalog_topics, tmp_path_factory):
    started = start_processors(catalog_topics, tmp_path_factory.mktemp("routes"), {"ORDEROPS_INSTANCE": "routes"})
    yield started
    for process in started.values():
        process.stop(signal.SIGKILL)


async def request(url: str, method: str, token: str | None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.request(
            method, url, headers=headers, json={} if method == "POST" else None) as response:
        return response.status, await response.read()


@pytest.mark.parametrize("processor", PROCESSORS)
async def test_every_route_is_guarded_but_the_open_ones(processor, processors, support_users):
    process = processors[processor]
    await process.wait_ready(timeout=120)
    routes = served_routes(processor)
    checked = 0
    for method, path in routes:
        url = process.url + path.format(**SAMPLE)
        if path in OPEN:
            status, body = await request(url, method, None)
            assert status == 200, (processor, method, path, status)
            assert path != "/" or processor == "timeline", f"{processor} serves / (only the timeline's console may)"
            continue
        for token in (None, "not-a-token"):
            status, body = await request(url, method, token)
            # 405: a method the view does not have (aiohttp lists HEAD for every view); it says nothing.
            assert status in (401, 405), f"{processor} {method} {path} answered {status} with token {token!r}: {body[:300]!r}"
        if method == "HEAD":
            continue
        role = declared_role(processor, method, path)
        assert role is not None, f"{processor} serves {method} {path}, declared nowhere: guard it or document it as open"
        status, body = await request(url, method, support_users.tokens["ann"])  # ann is an agent
        if role == "agent":
            assert status not in (401, 403), (processor, method, path, status, body[:300])
        else:
            assert status == 403, f"{processor} {method} {path} needs a {role} but let an agent in: {status}"
        checked += 1
    assert checked > 0, f"{processor}: no guarded route was checked (routes: {routes})"


def test_faust_built_in_pages_are_not_served():
    """The pages that showed table contents and the cluster's layout without a token."""
    for processor in PROCESSORS:
        paths = {path for _, path in served_routes(processor)}
        assert not {p for p in paths if p.startswith(("/table", "/router", "/graph", "/stats", "/performance"))}, \
            (processor, sorted(paths))
