"""Local sinks for `make run`: a real SMTP server and a real webhook receiver, both keeping what
they receive as files so a person can read what customers would have been told.

    SMTP     127.0.0.1:$ORDEROPS_SMTP_PORT (2525)  -> .run/sinks/mail/<n>-<message id>.eml
    webhook  http://127.0.0.1:$ORDEROPS_SINK_PORT (6180)/hooks/notifications
             -> .run/sinks/webhooks/<n>-<idempotency key>.json ; GET / lists everything received

The webhook receiver does what a real one must (docs/webhooks.md): it verifies the HMAC signature
and its timestamp (401 otherwise), and drops a delivery whose signed ``delivery_id`` it has (200,
not stored twice). The ``Idempotency-Key`` header is not signed: one that differs from the signed
id is refused (400), so a captured request replayed under a new key is still the same delivery.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from aiosmtpd.controller import Controller

from notifier.channels import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, SignatureError, verified_delivery_id
from orderops.ops.settings import default_run_dir


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:120]


class MailStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server, session, envelope) -> str:
        content = envelope.original_content or envelope.content
        match = re.search(rb"^Message-ID:\s*<([^>]+)>", content, re.MULTILINE | re.IGNORECASE)
        name = f"{time.time_ns()}-{_safe(match.group(1).decode() if match else 'no-id')}.eml"
        (self.folder / name).write_bytes(content)
        return "250 Message accepted for delivery"


def webhook_app(secrets: Callable[[], list[bytes]], folder: Path) -> web.Application:
    """A receiver as a shop's would be: it accepts a webhook signed with any of ``secrets()``
    (re-read each time, so a rotated secret is picked up)."""
    folder.mkdir(parents=True, exist_ok=True)
    seen = {p.stem.split("-", 1)[1] for p in folder.glob("*.json")}

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            delivery_id = verified_delivery_id(secrets(), request.headers.get(SIGNATURE_HEADER), body, time.time())
        except SignatureError as exc:
            return web.json_response({"error": str(exc)}, status=401)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        header = request.headers.get(IDEMPOTENCY_HEADER)
        if header is not None and header != delivery_id:
            return web.json_response({"error": f"{IDEMPOTENCY_HEADER} {header!r} is not the signed delivery id "
                                               f"{delivery_id!r}"}, status=400)
        if _safe(delivery_id) in seen:
            return web.json_response({"status": "duplicate ignored", "delivery_id": delivery_id})
        seen.add(_safe(delivery_id))
        (folder / f"{time.time_ns()}-{_safe(delivery_id)}.json").write_bytes(body)
        return web.json_response({"status": "stored", "delivery_id": delivery_id})

    async def index(request: web.Request) -> web.Response:
        received = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
        return web.json_response({"received": len(received), "messages": [
            {k: m.get(k) for k in ("delivery_id", "type", "order_id", "subject", "body")} for m in received]})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"service": "notifier-sinks", "ready": True})

    app = web.Application()
    app.add_routes([web.post("/hooks/notifications", receive), web.get("/", index), web.get("/healthz", healthz)])
    return app


async def serve() -> None:
    from notifier.app import webhook_secrets

    root = Path(os.environ.get("ORDEROPS_RUN_DIR", default_run_dir())) / "sinks"
    smtp_port = int(os.environ.get("ORDEROPS_SMTP_PORT", "2525"))
    http_port = int(os.environ.get("ORDEROPS_SINK_PORT", "6180"))
    host = os.environ.get("ORDEROPS_WEB_BIND", os.environ.get("ORDEROPS_WEB_HOST", "127.0.0.1"))  # 0.0.0.0 in a container
    controller = Controller(MailStore(root / "mail"), hostname=host, port=smtp_port)
    controller.start()
    runner = web.AppRunner(webhook_app(webhook_secrets, root / "webhooks"))
    await runner.setup()
    await web.TCPSite(runner, host, http_port).start()
    print(f"notifier sinks: SMTP {host}:{smtp_port} -> {root / 'mail'}; "
          f"webhooks http://{host}:{http_port}/hooks/notifications -> {root / 'webhooks'}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        controller.stop()
        await runner.cleanup()


def main() -> None:
    asyncio.run(serve())


if __name__ == "__main__":
    main()
