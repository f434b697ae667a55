"""Every endpoint of the support API on a real timeline process: no token 401, a wrong token 401,
too low a role 403, the right role through (and every answer with the security headers)."""

from __future__ import annotations

import signal

import pytest
from test_timeline_on_kafka import start

from timeline import api

pytestmark = pytest.mark.broker
ORDER = "access-o-1"
PATHS = {"order_id": ORDER, "escalation_id": f"{ORDER}:repeat-contact:c-1", "return_id": "r-1", "tag": "vip"}
BODIES = {
    "/orders/{order_id}/contacts": {"reason": "where is it?"},
    "/orders/{order_id}/tags": {"tag": "carrier-delay"},
    "/escalations/{escalation_id}/ack": {"note": "on it"},
    "/escalations/{escalation_id}/assign": {"assignee": "lee"},
    "/escalations/{escalation_id}/resolve": {"note": "called back"},
    "/returns/{return_id}/approve-exception": {"order_id": ORDER, "reason": "loyal customer"},
}
QUERIES = {"/orders": "?customer=ada@example.com"}
BELOW = {"agent": None, "lead": "ann", "admin": "lee"}  # a user whose role is just below the one needed
HOLDS = {"agent": "ann", "lead": "lee", "admin": "root"}


@pytest.fixture(scope="module")
def timeline(catalog_topics, tmp_path_factory):
    process = start(catalog_topics, "access", tmp_path_factory.mktemp("access"))
    yield process
    process.stop(signal.SIGKILL)


@pytest.mark.parametrize("endpoint", api.ENDPOINTS, ids=lambda e: f"{e.method.upper()} {e.path}")
async def test_each_endpoint_lets_in_exactly_its_roles(timeline, endpoint, support_users):
    await timeline.wait_ready()
    path = endpoint.path.format(**PATHS) + QUERIES.get(endpoint.path, "")
    body = BODIES.get(endpoint.path)

    async def call(token):
        return await timeline.call(endpoint.method.upper(), path, body, token=token)

    assert (await call(""))[0] == 401
    assert (await call("not-a-token"))[0] == 401
    below = BELOW[endpoint.role]
    if below is not None:
        status, answer = await call(support_users.tokens[below])
        assert status == 403 and endpoint.role in answer["error"], answer
    for role in api_roles_from(endpoint.role):
        status, answer = await call(support_users.tokens[HOLDS[role]])
        assert status in (200, 202, 404), (role, status, answer)  # 404: an order the timeline has not seen
        if endpoint.method in ("post", "delete"):
            assert status == 202 and answer["accepted"] is True


def api_roles_from(role: str) -> list[str]:
    roles = ["agent", "lead", "admin"]
    return roles[roles.index(role):]


async def test_processor_read_apis_need_a_token_too(catalog_topics, tmp_path, run_id):
    from orderops_tools.testing import start_processors

    process = start_processors(catalog_topics, tmp_path, {"ORDEROPS_INSTANCE": f"acc{run_id}"},
                               names=("fulfillment",))["fulfillment"]
    try:
        await process.wait_ready(timeout=120)
        assert (await process.call("GET", "/orders/x/fulfillment", token=""))[0] == 401
        assert (await process.call("GET", "/orders/x/fulfillment"))[0] == 404
        assert (await process.get_json("/healthz", token=""))[0] == 200, "health stays open for the orchestrator"
        status, spec = await process.get_json("/openapi.json", token="")
        operation = spec["paths"]["/orders/{order_id}/fulfillment"]["get"]
        assert status == 200 and operation["security"] == [{"bearer": []}] and "404" in operation["responses"]
    finally:
        process.stop(signal.SIGKILL)


async def test_a_401_says_how_to_sign_in_and_only_the_log_says_what_is_wrong_with_the_users_file(
        catalog_topics, tmp_path, run_id):
    """No users file: nobody can sign in. The caller is told to sign in, not where the file is nor
    what is wrong with it (found: the 401 named the file's path); the log says both."""
    from orderops_tools.testing import start_processors

    missing = tmp_path / "secret-place" / "support-users"
    process = start_processors(catalog_topics, tmp_path, {"ORDEROPS_INSTANCE": f"nouser{run_id}",
                                                          "ORDEROPS_SUPPORT_USERS_FILE": str(missing)},
                               names=("fulfillment",))["fulfillment"]
    try:
        await process.wait_ready(timeout=120)
        status, answer = await process.call("GET", "/orders/x/fulfillment", token="some-token")
        assert status == 401 and "Authorization: Bearer" in answer["error"]
        assert "secret-place" not in answer["error"] and "users file" not in answer["error"], answer
    finally:
        process.stop(signal.SIGKILL)
    log = (tmp_path / "fulfillment.log").read_text()
    assert str(missing) in log and "cannot be read" in log


async def test_searches_and_the_queue_answer_429_past_a_users_limit_and_other_users_go_on(
        catalog_topics, tmp_path, run_id, support_users):
    process = start(catalog_topics, f"limit{run_id}", tmp_path, ORDEROPS_SUPPORT_QUERIES_PER_MINUTE="3")
    try:
        await process.wait_ready(timeout=120)
        ann, lee = support_users.tokens["ann"], support_users.tokens["lee"]
        answers = [(await process.call("GET", path, token=ann))[0]
                   for path in ("/escalations", "/orders?customer=ada@example.com", "/escalations", "/escalations")]
        assert answers == [200, 200, 200, 429], answers
        status, body = await process.call("GET", "/escalations", token=ann)
        assert status == 429 and "times a minute" in body["error"]
        assert (await process.call("GET", "/escalations", token=lee))[0] == 200, "the limit is per user"
        assert (await process.call("GET", f"/orders/{ORDER}", token=ann))[0] in (200, 404), "an order's view is not limited"
    finally:
        process.stop(signal.SIGKILL)
