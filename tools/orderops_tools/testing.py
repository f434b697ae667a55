"""Helpers for tests that run real processes against a real broker."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
from confluent_kafka import Consumer, Message, Producer

from orderops.ops.security import client_config
from orderops.ops.settings import PRODUCER_DEFAULTS

# Ports for the suite's servers, below Linux's ephemeral range (32768-60999 by default): a port the
# kernel picks for a bind to 0 comes from that range, and an outgoing connection (the suite's Kafka
# clients open many) could take it before the server that was handed it binds it ("address already
# in use"). Drawn at random (not from the seeded ``random``: two suites at once would draw alike).
SERVER_PORTS = range(20000, 32000)
_handed: set[int] = set()
_draw = random.SystemRandom()


def free_port() -> int:
    """A port nothing listens on, handed out once per process."""
    for _ in range(500):
        port = _draw.randrange(SERVER_PORTS.start, SERVER_PORTS.stop)
        if port in _handed:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed.add(port)
        return port
    raise RuntimeError(f"no free port between {SERVER_PORTS.start} and {SERVER_PORTS.stop}")


def producer(bootstrap: str) -> Producer:
    return Producer(client_config(bootstrap, **PRODUCER_DEFAULTS))


def read_topic(bootstrap: str, topic: str, until: Callable[[list[Message]], bool], timeout: float = 60.0,
               keep: Callable[[Message], bool] = lambda m: True) -> list[Message]:
    """Read ``topic`` from the beginning until ``until(kept messages)`` holds; fail after ``timeout``."""
    consumer = Consumer(client_config(bootstrap, **{
        "group.id": f"test-reader-{uuid.uuid4().hex}", "auto.offset.reset": "earliest", "enable.auto.commit": False,
    }))
    consumer.subscribe([topic])
    kept: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error() and keep(message):
                kept.append(message)
            if until(kept):
                return kept
        raise AssertionError(f"{topic}: condition not met within {timeout}s; read {len(kept)} matching messages")
    finally:
        consumer.close()


def text_of(message: Any) -> str:
    """The plain text part of an e-mail the ``Mailbox`` received (the part a customer's reader shows
    when it shows no HTML)."""
    return message.get_body(preferencelist=("plain",)).get_content()


class Mailbox:
    """A real SMTP server on a free port, as the customers' mailbox: every message it received,
    and how often each notifier delivery id came. ``with Mailbox() as mailbox: ... mailbox.port``."""

    def __init__(self) -> None:
        from collections import Counter

        self.messages: list[Any] = []
        self.delivery_ids: Counter = Counter()
        self.port = free_port()
        self._controller: Any = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import email
        from email import policy

        message = email.message_from_bytes(envelope.content, policy=policy.default)
        self.messages.append(message)
        # A long id is folded onto a second header line: parsed back, it starts with a space.
        self.delivery_ids[str(message["X-Orderops-Delivery-Id"]).strip()] += 1
        return "250 OK"

    def start(self) -> Mailbox:
        from aiosmtpd.controller import Controller

        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Mailbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WebhookSink:
    """A real HTTP server on a free port receiving the notifier's webhooks, as a shop's system
    would: how often each delivery (its ``Idempotency-Key``) came. ``await WebhookSink().start()``."""

    def __init__(self, answer_after: float = 0.0) -> None:
        from collections import Counter

        self.delivery_ids: Counter = Counter()
        self.connections: Counter = Counter()  # requests per client (host, port): one TCP connection each
        self.answer_after = answer_after  # seconds between taking a request and answering it (a slow receiver)
        self.port = free_port()
        self._runner: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/notifications"

    async def _receive(self, request: Any) -> Any:
        from aiohttp import web

        await request.read()
        self.delivery_ids[request.headers.get("Idempotency-Key", "")] += 1
        self.connections[request.transport.get_extra_info("peername")] += 1
        await asyncio.sleep(self.answer_after)
        return web.json_response({"status": "ok"})

    async def start(self) -> WebhookSink:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/hooks/notifications", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class SupportUsers:
    """Users of the HTTP APIs for a test run: ann (agent), lee (lead), root (admin), with fresh
    tokens, in a users file as ``orderops users add`` writes it."""

    ROLES: ClassVar[dict[str, str]] = {"ann": "agent", "lee": "lead", "root": "admin"}

    def __init__(self, path: Path) -> None:
        from orderops.http.auth import add_user

        self.path = path
        self.tokens = {user: add_user(path, user, role) for user, role in self.ROLES.items()}


class ServiceProcess:
    """A processor run as a real OS process, as `make run` runs it, with its log in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, web_port: int) -> None:
        self.args, self.env, self.log_path, self.web_port = args, env, log_path, web_port
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> ServiceProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, *self.args], env={**os.environ, **self.env},
                                            stdout=log, stderr=subprocess.STDOUT)
        return self

    async def wait_ready(self, timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise AssertionError(f"process exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    async with session.get(f"{self.url}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        last = await resp.json()
                        if resp.status == 200:
                            return last
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last = exc
                await _sleep(0.5)
        raise AssertionError(f"not ready within {timeout}s (last health: {last}):\n{self.log_tail()}")

    async def get_json(self, path: str, token: str | None = None) -> tuple[int, Any]:
        """GET as the user of ``token`` (default: ``ORDEROPS_SUPPORT_TOKEN``)."""
        return await self.call("GET", path, token=token)

    async def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                   token: str | None = None, headers: dict | None = None) -> tuple[int, Any]:
        """One request with a bearer token (default: ``ORDEROPS_SUPPORT_TOKEN``; "" sends none)."""
        token = os.environ.get("ORDEROPS_SUPPORT_TOKEN", "") if token is None else token
        sent = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
        async with aiohttp.ClientSession() as session, session.request(
                method, f"{self.url}{path}", json=body if raw is None else None, data=raw, headers=sent) as resp:
            return resp.status, await resp.json(content_type=None)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"did not stop within {timeout}s of {signal.Signals(sig).name}:\n{self.log_tail()}") from exc

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class IngestProcess:
    """`orderops ingest` as a real process, with principals of its own (name -> upstream system)."""

    def __init__(self, bootstrap: str, workdir: Path, principals: dict[str, str],
                 settings: dict[str, str] | None = None) -> None:
        from orderops.http.auth import add_user
        from orderops.ingest.app import PRINCIPALS_HEADER, SYSTEMS

        path = workdir / "ingest-principals"
        self.tokens = {name: add_user(path, name, system, roles=SYSTEMS, header=PRINCIPALS_HEADER)
                       for name, system in principals.items()}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"KAFKA_BOOTSTRAP": bootstrap, "ORDEROPS_INGEST_PORT": str(self.port),
                    "ORDEROPS_INGEST_PRINCIPALS_FILE": str(path), "ORDEROPS_INGEST_DATA_DIR": str(workdir / "ingest"),
                    **(settings or {})}
        self.log = workdir / "ingest.log"

    def start(self) -> ServiceProcess:
        return ServiceProcess(["-m", "orderops.ingest"], self.env, self.log, self.port).start()

    async def post(self, topic: str, body: Any = None, *, who: str | None = None, raw: bytes | None = None,
                   content_type: str = "application/json") -> tuple[int, Any]:
        """POST /topics/<topic>/events as principal ``who`` (default: the first one; None-like "" sends no token)."""
        import json

        who = next(iter(self.tokens)) if who is None else who
        headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {self.tokens[who]}"} if who else {})}
        async with aiohttp.ClientSession() as session, session.post(
                f"{self.url}/topics/{topic}/events", headers=headers,
                data=raw if raw is not None else json.dumps(body)) as response:
            return response.status, await response.json(content_type=None)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


async def poll_json(process: ServiceProcess, path: str, condition: Callable[[Any], bool], timeout: float = 60) -> Any:
    """GET ``path`` until it answers 200 with a body for which ``condition`` holds."""
    import asyncio

    deadline, body = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        status, body = await process.get_json(path)
        if status == 200 and condition(body):
            return body
        await asyncio.sleep(0.3)
    raise AssertionError(f"{path}: condition not met within {timeout}s; last answer {body}\n{process.log_tail()}")


def decode_all(messages: list[Message], topic: Any) -> list:
    """Messages of a catalog topic as Envelopes."""
    from orderops.codec.avro import Codec
    from orderops.model.envelope import Envelope

    codec = _CODEC.setdefault("codec", Codec())
    return [Envelope.from_record(codec.decode(m.value(), topic.value_schema).record) for m in messages]


_CODEC: dict[str, Any] = {}


class PrivateBroker:
    """A real broker of one test's own (the embedded Kafka of deploy/kafka/kafka.sh on free ports,
    its data under ``run_dir``), with every catalog topic: for tests that count everything a
    processor saw, or that stop and restart the broker, without disturbing the suite's broker.

    ``secure``: TLS, SASL/SCRAM and ACLs (SECURE=1), every principal set up from the catalog;
    ``client_env(principal)`` is what a client acting as one needs."""

    def __init__(self, run_dir: Path, secure: bool | None = None) -> None:
        from orderops.ops.settings import default_run_dir

        secure = os.environ.get("SECURE") == "1" if secure is None else secure  # SECURE=1 make test: all secure
        self.run_dir, self.port, self.controller_port, self.secure = run_dir, free_port(), free_port(), secure
        shared = Path(os.environ.get("ORDEROPS_RUN_DIR", default_run_dir())) / "kafka" / "classpath.txt"
        self.env = {**os.environ, "KAFKA_PORT": str(self.port), "KAFKA_CONTROLLER_PORT": str(self.controller_port),
                    "ORDEROPS_RUN_DIR": str(run_dir), "KAFKA_HEAP_OPTS": "-Xms128m -Xmx512m",
                    "SECURE": "1" if secure else "", "KAFKA_BROKERS": "1"}
        if shared.is_file():
            self.env["KAFKA_CLASSPATH_FILE"] = str(shared)
        self.secrets = Path(os.environ.get("ORDEROPS_KAFKA_SECRETS_DIR", run_dir / "secrets" / "kafka"))
        self.env["ORDEROPS_KAFKA_SECRETS_DIR"] = str(self.secrets)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / ("kafka-secure" if self.secure else "kafka") / "kafka.pid"

    def client_env(self, principal: str = "admin") -> dict[str, str]:
        """Environment variables for a client of this broker (as ``principal`` when secure)."""
        from orderops.ops.security import principal_env

        return {"KAFKA_BOOTSTRAP": self.bootstrap, **(principal_env(principal, self.secrets) if self.secure else {})}

    def _script(self, command: str) -> None:
        from orderops.ops.brokers import KAFKA_SCRIPT

        subprocess.run([str(KAFKA_SCRIPT), command], env=self.env, check=True, stdout=subprocess.DEVNULL)

    def start(self) -> str:
        from orderops.ops.admin import create_topics
        from orderops.ops.security import setup
        from orderops.ops.settings import KafkaSettings

        self._script("up")
        with environment(self.client_env()):
            create_topics(settings=KafkaSettings(self.bootstrap, 1))
            if self.secure:
                setup(self.bootstrap, self.secrets)
        return self.bootstrap

    def stop(self) -> None:
        self._script("down")

    def kill(self) -> None:
        """SIGKILL the broker, and return once it is gone."""
        pid = int(self.pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        while True:
            try:
                os.kill(pid, 0)
                time.sleep(0.1)
            except ProcessLookupError:
                return


class PrivateCluster:
    """Three KRaft nodes of one test's own (deploy/kafka/kafka.sh with KAFKA_BROKERS=3: each a broker
    and a controller; node n on the base ports plus 10×(n−1), data under ``run_dir``), with every
    catalog topic at three replicas, two in sync; nodes are killed, frozen and started one by one."""

    NODES = (1, 2, 3)
    REPLICAS, IN_SYNC = 3, 2

    def __init__(self, run_dir: Path) -> None:
        from orderops.ops.settings import default_run_dir

        self.run_dir = run_dir
        self.port, self.controller_port = self._free_bases()
        shared = Path(os.environ.get("ORDEROPS_RUN_DIR", default_run_dir())) / "kafka" / "classpath.txt"
        self.env = {**os.environ, "KAFKA_BROKERS": "3", "KAFKA_PORT": str(self.port),
                    "KAFKA_CONTROLLER_PORT": str(self.controller_port), "ORDEROPS_RUN_DIR": str(run_dir),
                    "KAFKA_HEAP_OPTS": "-Xms128m -Xmx384m", "SECURE": ""}
        if shared.is_file():
            self.env["KAFKA_CLASSPATH_FILE"] = str(shared)

    @staticmethod
    def _free_bases() -> tuple[int, int]:
        """Two base ports whose three nodes' ports (base, +10, +20) are all free."""
        for _ in range(100):
            port, controller = free_port(), free_port()
            wanted = [p + 10 * k for p in (port, controller) for k in range(3)]
            if len(set(wanted)) == 6 and all(_free(p) for p in wanted) and max(wanted) < 65536:
                return port, controller
        raise RuntimeError("no six free ports for a cluster")

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.port + 10 * (n - 1)}" for n in self.NODES)

    def client_env(self) -> dict[str, str]:
        """What a processor of this cluster needs: every node to start from, three replicas, two in sync."""
        return {"KAFKA_BOOTSTRAP": self.bootstrap, "ORDEROPS_REPLICATION_FACTOR": str(self.REPLICAS),
                "ORDEROPS_MIN_INSYNC_REPLICAS": str(self.IN_SYNC)}

    def _script(self, command: str, node: int | None = None) -> None:
        from orderops.ops.brokers import KAFKA_SCRIPT

        env = {**self.env, **({"KAFKA_NODE": str(node)} if node else {})}
        subprocess.run([str(KAFKA_SCRIPT), command], env=env, check=True, stdout=subprocess.DEVNULL)

    def pid(self, node: int) -> int:
        return int((self.run_dir / "kafka-cluster" / f"node-{node}" / "kafka.pid").read_text())

    def start(self) -> str:
        from orderops.ops.admin import create_topics
        from orderops.ops.settings import KafkaSettings

        self._script("up")
        create_topics(settings=KafkaSettings(self.bootstrap, self.REPLICAS, self.IN_SYNC))
        return self.bootstrap

    def start_node(self, node: int) -> None:
        self._script("up", node)

    def kill(self, node: int) -> None:
        """SIGKILL the node and wait until it is gone."""
        pid = self.pid(node)
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)

    def freeze(self, node: int, frozen: bool) -> None:
        """SIGSTOP (a node that stops answering with its connections open, as in a long GC pause or a
        cut network) or SIGCONT it."""
        os.kill(self.pid(node), signal.SIGSTOP if frozen else signal.SIGCONT)

    def leader(self, topic: str, partition: int) -> int:
        from confluent_kafka.admin import AdminClient

        metadata = AdminClient(client_config(self.bootstrap)).list_topics(topic, timeout=30)
        return metadata.topics[topic].partitions[partition].leader

    def stop(self) -> None:
        """Every node SIGKILLed: the cluster is the test's alone, and a controlled shutdown of the last
        two nodes waits for a quorum that is leaving."""
        for node in self.NODES:
            with suppress(OSError, ValueError):  # not running, or no pid file yet
                self.kill(node)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@contextmanager
def environment(variables: dict[str, str]) -> Iterator[None]:
    """Within the block, ``os.environ`` has ``variables`` (for clients made in this process)."""
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def orderops_cli(bootstrap: str, *args: str, timeout: float = 300, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess:
    """Run ``orderops <args>`` against this broker, as an operator would (``env``: e.g. a principal's)."""
    return subprocess.run([sys.executable, "-m", "orderops.ops.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "KAFKA_BOOTSTRAP": bootstrap, **(env or {})}, timeout=timeout)


def rebuilt_identically(result: subprocess.CompletedProcess) -> tuple[int, int]:
    """The orders and records an ``orderops replay rebuild`` found identical, which a check requires
    to be more than none (exit 0 alone also follows a rebuild of orders that wrote nothing)."""
    import re

    found = re.search(r"rebuild: identical: the state of ([\d,]+) orders and ([\d,]+) records match", result.stdout)
    assert result.returncode == 0 and found, result.stdout + result.stderr[-2000:]
    return int(found[1].replace(",", "")), int(found[2].replace(",", ""))


def start_processors(bootstrap: str, workdir: Path, env: dict[str, str] | None = None,
                     names: tuple[str, ...] | None = None, broker: PrivateBroker | None = None
                     ) -> dict[str, ServiceProcess]:
    """Every processor (or ``names``) as a real process on this broker, each on a free port, logs
    and state under ``workdir``; not yet ready (await ``wait_ready``). On a secure ``broker`` each
    connects as its own principal."""
    from orderops.model.catalog import PROCESSORS

    processes = {}
    for name in names or PROCESSORS:
        port = free_port()
        processes[name] = ServiceProcess(["-m", name.replace("-", "_")], {
            "KAFKA_BOOTSTRAP": bootstrap, "WEB_PORT": str(port), "ORDEROPS_DATA_DIR": str(workdir / "state"),
            "ORDEROPS_SESSION_TIMEOUT_SECONDS": "6", **(broker.client_env(name) if broker else {}), **(env or {})},
            workdir / f"{name}.log", port).start()
    return processes
