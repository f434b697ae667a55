"""A client of a Confluent-compatible Schema Registry, for the Confluent framing.

Most Kafka shops produce Avro framed as magic byte 0, a 4-byte big-endian schema id, then the
body, with the writer schema kept in a registry (Confluent's, or Apicurio's Confluent-compatible
API at ``/apis/ccompat/v7``). A reader asks the registry for the schema of each id it has not seen,
once: the answer for an id never changes, so it is cached for the life of the process. A writer
registers its schema under the topic's subject (``<topic>-value``) and caches the id.

``ORDEROPS_SCHEMA_REGISTRY_URL`` is the API's base URL (``make run``: http://127.0.0.1:6108/apis/ccompat/v7).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from orderops.codec.schemas import ResolvedSchema

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
ATTEMPTS = 3  # a registry that does not answer three times, a second apart, is reported unreachable


class RegistryError(Exception):
    """The registry could not give a schema: ``reason`` is a stable code (dead-letter headers)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def subject(topic: str) -> str:
    """The subject a topic's value schemas are registered under (Confluent's TopicNameStrategy)."""
    return f"{topic}-value"


class SchemaRegistryClient:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout
        self._by_id: dict[int, ResolvedSchema] = {}
        self._ids: dict[tuple[str, str], int] = {}  # (subject, canonical form) -> id

    @classmethod
    def from_env(cls) -> SchemaRegistryClient | None:
        url = os.environ.get("ORDEROPS_SCHEMA_REGISTRY_URL", "").strip()
        return cls(url) if url else None

    def schema(self, schema_id: int) -> ResolvedSchema:
        """The writer schema registered under ``schema_id``."""
        found = self._by_id.get(schema_id)
        if found is None:
            answer = self._call("GET", f"/schemas/ids/{schema_id}", None, f"schema id {schema_id}")
            if answer.get("schemaType", "AVRO") != "AVRO":
                raise RegistryError(f"schema id {schema_id} is {answer['schemaType']}, not Avro", "not-avro")
            try:
                parsed = json.loads(answer["schema"])
            except (KeyError, ValueError) as exc:
                raise RegistryError(f"schema id {schema_id}: the registry's answer holds no Avro schema", "bad-answer") \
                    from exc
            name = parsed.get("name", "?") if isinstance(parsed, dict) else "?"
            namespace = parsed.get("namespace") if isinstance(parsed, dict) else None
            full = name if "." in name or not namespace else f"{namespace}.{name}"
            found = self._by_id[schema_id] = ResolvedSchema(full, parsed)
        return found

    def id_of(self, topic: str, schema: ResolvedSchema) -> int:
        """The id of ``schema`` under the topic's subject, registered if it is not yet."""
        key = (subject(topic), schema.canonical_form)
        if key not in self._ids:
            answer = self._call("POST", f"/subjects/{urllib.parse.quote(subject(topic), safe='')}/versions",
                                {"schema": json.dumps(schema.schema), "schemaType": "AVRO"},
                                f"registering {schema.name} under {subject(topic)}")
            self._ids[key] = int(answer["id"])
            self._by_id.setdefault(self._ids[key], schema)
        return self._ids[key]

    def _call(self, method: str, path: str, body: dict[str, Any] | None, what: str) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE})
        last = ""
        for attempt in range(ATTEMPTS):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    answer = json.loads(response.read())
                    return answer if isinstance(answer, dict) else {}
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    raise RegistryError(f"{what}: the registry at {self.url} does not know it (404)",
                                        "unknown-schema-id") from exc
                if exc.code < 500:
                    raise RegistryError(f"{what}: the registry at {self.url} refused it ({exc.code}: "
                                        f"{exc.read()[:200]!r})", "registry-refused") from exc
                last = f"{exc.code}"
            except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt + 1 < ATTEMPTS:
                time.sleep(1.0)
        raise RegistryError(f"{what}: the registry at {self.url} did not answer ({last}); re-drive once it is up",
                            "registry-unreachable")
