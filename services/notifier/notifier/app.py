"""notifier's app: the kernel's Service, the delivery ledger table, channels and settings.

Settings (environment, defaults for a local run):
  ORDEROPS_NOTIFIER_CHANNELS          email,webhook     channels every request is delivered on
  ORDEROPS_SMTP_HOST / _PORT          127.0.0.1 / 2525  SMTP server (make run starts a local sink)
  ORDEROPS_SMTP_FROM                  orders@orderops.localhost
  ORDEROPS_SMTP_USERNAME / _PASSWORD / _STARTTLS        optional
  ORDEROPS_WEBHOOK_URL                http://127.0.0.1:6180/hooks/notifications
  ORDEROPS_WEBHOOK_SECRET             (or ORDEROPS_WEBHOOK_SECRET_FILE, default .run/notifier/webhook-secret,
                                      created with a random secret when missing; a second line, or
                                      ORDEROPS_WEBHOOK_PREVIOUS_SECRET, is the secret being rotated out:
                                      webhooks are then signed with both)
  ORDEROPS_NOTIFIER_CONCURRENCY       8   orders delivered at once (each order's messages in sequence); as
                                      many SMTP connections at most
  ORDEROPS_NOTIFIER_SEND_TIMEOUT_SECONDS  5
  ORDEROPS_NOTIFIER_MAX_ATTEMPTS      10
  ORDEROPS_NOTIFIER_BACKOFF_SECONDS   2 (doubling per attempt, equal jitter, capped by _BACKOFF_MAX_SECONDS 300)
  ORDEROPS_NOTIFIER_BREAKER_FAILURES  5   consecutive failures that open a channel's circuit
  ORDEROPS_NOTIFIER_BREAKER_SECONDS   30  how long it stays open
  ORDEROPS_NOTIFIER_COALESCE_SECONDS  0   merge same-type requests of an order within this window (0: off)
  ORDEROPS_NOTIFIER_SETTLE_SECONDS    2   a request read within this long of being written waits until then for
                                      requests of earlier causes from other processors; an order's messages
                                      go in the order their causes happened (0: in the order requests came)
  ORDEROPS_NOTIFIER_TEMPLATES         the package's templates/ folder
  ORDEROPS_NOTIFIER_PREFERENCES       YAML file of customers' opt-outs and quiet hours (optional)
  ORDEROPS_NOTIFIER_LOCALE            en  fallback locale
  ORDEROPS_SHOP_NAME                  orderops demo shop   who the messages come from (heading and sign-off)
  ORDEROPS_SHOP_SIGNATURE             the sign-off's last line (default: the locale's "The <shop name> team")
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path

import yaml

from notifier.channels import CircuitBreaker, EmailChannel, WebhookChannel
from notifier.delivering import Dispatcher
from notifier.ledger import Preferences, RetryPolicy
from notifier.rendering import Shop, Templates
from orderops.model.catalog import NOTIFIER, WEB_PORTS
from orderops.ops.settings import default_run_dir
from orderops.service import Service

# No linger: a batch waits for the broker before its sends (the attempts on record) and after them
# (the outcomes), and the sends wait for the first: a linger would be added to every message's latency.
# Deadlines swept every second: a message held to settle (ORDEROPS_NOTIFIER_SETTLE_SECONDS) goes out
# soon after its window closes. The sweep reads only orders with a delivery waiting or retrying.
service = Service(NOTIFIER, default_web_port=WEB_PORTS[NOTIFIER], default_linger_ms=0,
                  default_timer_interval_seconds=1.0)
app = service.app
env = os.environ

# order id -> Ledger.to_json(): every delivery of the order's notifications and its state.
ledgers = service.table("ledger", default=None, help="Delivery ledger per order")


def webhook_secrets() -> list[bytes]:
    """The active webhook signing secrets: the current one, and during a rotation the previous one
    (ORDEROPS_WEBHOOK_PREVIOUS_SECRET, or the file's second line). Read at every send."""
    if env.get("ORDEROPS_WEBHOOK_SECRET"):
        found = [env["ORDEROPS_WEBHOOK_SECRET"], env.get("ORDEROPS_WEBHOOK_PREVIOUS_SECRET", "")]
    else:
        path = Path(env.get("ORDEROPS_WEBHOOK_SECRET_FILE", default_run_dir() / "notifier" / "webhook-secret"))
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
        found = path.read_text().splitlines()
    active = [s.strip().encode() for s in found if s.strip()]
    if not active or len(active) > 2:
        raise ValueError("the webhook signing secret: one, or two during a rotation (current first); "
                         f"found {len(active)}")
    return active


def load_preferences() -> Preferences:
    path = env.get("ORDEROPS_NOTIFIER_PREFERENCES")
    return Preferences.from_document(yaml.safe_load(Path(path).read_text()) if path else None)


SEND_TIMEOUT = float(env.get("ORDEROPS_NOTIFIER_SEND_TIMEOUT_SECONDS", "5"))
CONCURRENCY = int(env.get("ORDEROPS_NOTIFIER_CONCURRENCY", "8"))
if CONCURRENCY < 1:
    raise SystemExit(f"ORDEROPS_NOTIFIER_CONCURRENCY={CONCURRENCY}: orders delivered at once, 1 or more (default 8)")
AVAILABLE = {
    "email": lambda: EmailChannel(
        env.get("ORDEROPS_SMTP_HOST", "127.0.0.1"), int(env.get("ORDEROPS_SMTP_PORT", "2525")),
        env.get("ORDEROPS_SMTP_FROM", "orders@orderops.localhost"), SEND_TIMEOUT,
        env.get("ORDEROPS_SMTP_USERNAME"), env.get("ORDEROPS_SMTP_PASSWORD"),
        env.get("ORDEROPS_SMTP_STARTTLS", "0") == "1"),
    "webhook": lambda: WebhookChannel(env.get("ORDEROPS_WEBHOOK_URL", "http://127.0.0.1:6180/hooks/notifications"),
                                      webhook_secrets, SEND_TIMEOUT),
}
names = [c.strip() for c in env.get("ORDEROPS_NOTIFIER_CHANNELS", "email,webhook").split(",") if c.strip()]
unknown = sorted(set(names) - set(AVAILABLE))
if unknown:
    raise SystemExit(f"ORDEROPS_NOTIFIER_CHANNELS names unknown channels {unknown}; known: {sorted(AVAILABLE)}")

dispatcher = Dispatcher(
    channels={name: AVAILABLE[name]() for name in names},
    breakers={name: CircuitBreaker(int(env.get("ORDEROPS_NOTIFIER_BREAKER_FAILURES", "5")),
                                   float(env.get("ORDEROPS_NOTIFIER_BREAKER_SECONDS", "30"))) for name in names},
    templates=Templates(Path(env.get("ORDEROPS_NOTIFIER_TEMPLATES", Path(__file__).parent / "templates")),
                        env.get("ORDEROPS_NOTIFIER_LOCALE", "en"),
                        Shop(env.get("ORDEROPS_SHOP_NAME", "orderops demo shop"), env.get("ORDEROPS_SHOP_SIGNATURE", ""))),
    preferences=load_preferences(),
    retry=RetryPolicy(int(env.get("ORDEROPS_NOTIFIER_MAX_ATTEMPTS", "10")),
                      timedelta(seconds=float(env.get("ORDEROPS_NOTIFIER_BACKOFF_SECONDS", "2"))),
                      timedelta(seconds=float(env.get("ORDEROPS_NOTIFIER_BACKOFF_MAX_SECONDS", "300")))),
    coalesce=timedelta(seconds=float(env.get("ORDEROPS_NOTIFIER_COALESCE_SECONDS", "0"))),
    settle=timedelta(seconds=float(env.get("ORDEROPS_NOTIFIER_SETTLE_SECONDS", "2"))),
)


@app.on_before_shutdown.connect
async def close_channels(sender, **kwargs) -> None:
    """Kept connections (SMTP, the webhook session) closed on the way out, not left to the process's end."""
    for channel in dispatcher.channels.values():
        await channel.close()
