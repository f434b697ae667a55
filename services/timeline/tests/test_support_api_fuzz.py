"""A schema-driven fuzz of the support API (schemathesis, from the OpenAPI description the server
publishes) against a real timeline process, signed in as a lead, with valid and invalid requests:
whatever it is sent, it never answers 5xx, and only with the status codes it documents
(FUZZ_EXAMPLES per endpoint, 25 by default)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance
from test_timeline_on_kafka import start

from timeline import api

pytestmark = pytest.mark.broker
SCHEMA = schemathesis.openapi.from_dict(api.openapi())
# Valid requests and invalid ones (wrong types, missing fields, extra fields, out-of-range values).
SCHEMA.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def timeline(catalog_topics, tmp_path_factory):
    process = start(catalog_topics, "fuzz", tmp_path_factory.mktemp("fuzz"))
    asyncio.run(process.wait_ready())
    yield process
    process.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def lead_token(support_users):
    return support_users.tokens["lee"]


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case, timeline, lead_token):
    case.call_and_validate(base_url=timeline.url, headers={"Authorization": f"Bearer {lead_token}"},
                           checks=[not_a_server_error, status_code_conformance], timeout=30)
