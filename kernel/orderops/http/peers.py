"""Queries answered from every worker of a processor: each worker holds only its partitions' orders.

A read of one order goes to the worker that owns it (``Service.routed_by_order``). A query over many
orders (a customer's orders, the escalation queue) has no owner: the worker asked answers from its
own partitions and asks every other worker of its group for theirs, with the caller's token, and
the answers are combined. Each worker checks the token and counts the query against the user's
limit itself; the peer header only says "answer from your own partitions, do not ask on".

The other workers are the members the group's last assignment gave table partitions to
(``app.router.tables_metadata()``: URL -> changelog partitions). A worker that holds no partition
holds no order, so it is not asked.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import faust
from yarl import URL

log = logging.getLogger("orderops.http")

PEER_HEADER = "X-Orderops-Peer"
# How long a worker waits for another's answer: a worker that does not answer in this time is
# reported as not having answered, and the answer says it is incomplete.
PEER_TIMEOUT_SECONDS = 5.0


@dataclass
class Gathered:
    """What the workers answered: ``answers`` (this worker's first), and the URLs of those that did not."""

    answers: list[Any]
    unanswered: list[str] = field(default_factory=list)
    refused: tuple[int, Any] | None = None  # a worker's 4xx, passed on as it is (a 429 above all)


def asked_by_peer(request: Any) -> bool:
    """Whether another worker of the group sent this query (answer from your own partitions only)."""
    return bool(request.headers.get(PEER_HEADER) == "1")


def peer_urls(app: faust.App) -> list[URL]:
    """The other workers holding partitions, by the URL they serve at."""
    mine = _ident(URL(str(app.conf.canonical_url)))
    urls = {URL(str(url)) for url in app.router.tables_metadata()}
    return sorted((u for u in urls if _ident(u) != mine), key=str)


async def gather(app: faust.App, request: Any, local: Any) -> Gathered:
    """``local`` (this worker's answer) and every other worker's answer to the same request."""
    found = Gathered([local])
    peers = peer_urls(app)
    if not peers:
        return found
    headers = {PEER_HEADER: "1"}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    replies = await asyncio.gather(*(_ask(app, request.rel_url, url, headers) for url in peers))
    for url, (status, body) in zip(peers, replies, strict=True):
        if status == 200:
            found.answers.append(body)
        elif status is not None and 400 <= status < 500 and found.refused is None:
            found.refused = (status, body)
        else:
            found.unanswered.append(str(url))
            log.warning("%s did not answer %s (%s): the answer lacks the orders of its partitions; it answers again "
                        "once it is up and the group has rebalanced", url, request.rel_url.path, status or body)
    return found


async def _ask(app: faust.App, path: URL, peer: URL, headers: dict[str, str]) -> tuple[int | None, Any]:
    target = peer.with_path(path.path).with_query(path.query)
    try:
        async with app.http_client.get(target, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT_SECONDS)) as response:
            return response.status, await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _ident(url: URL) -> tuple[str, int]:
    return (url.host or "", int(url.port or 80))

