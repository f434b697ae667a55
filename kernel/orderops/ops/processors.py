"""Run the installed processors on this machine, detached, as `make run` does.

Each processor runs as ``python -m <package>`` (package = processor name with ``_``), logs to
``.run/logs/<processor>.log`` and leaves its pid in ``.run/pids/<processor>.pid``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orderops.model.catalog import INGEST_PORT, PROCESSORS, WEB_PORTS
from orderops.ops.settings import default_run_dir


@dataclass(frozen=True)
class Processor:
    name: str
    module: str = ""  # default: the processor's package (its name with "_")
    web_port: int = 0  # default: catalog.WEB_PORTS; NO_WEB: no health endpoint (ready = still running)
    args: tuple[str, ...] = ()
    health_path: str = "/healthz"
    needs_program: str = ""  # a program on PATH it runs (not installed without it)

    @property
    def package(self) -> str:
        return self.module or self.name.replace("-", "_")

    @property
    def installed(self) -> bool:
        if self.needs_program and shutil.which(self.needs_program) is None:
            return False
        return importlib.util.find_spec(self.package.split(".")[0]) is not None

    @property
    def port(self) -> int:
        return self.web_port or WEB_PORTS[self.name]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


NO_WEB = -1
# Local stand-ins a processor talks to in `make run`, and the HTTP ingest, started before the processors.
INGEST = Processor("ingest", "orderops.ingest", int(os.environ.get("ORDEROPS_INGEST_PORT", str(INGEST_PORT))))
COMPANIONS = (Processor("notifier-sinks", "notifier.sinks", int(os.environ.get("ORDEROPS_SINK_PORT", "6180"))), INGEST)
# Watchers, started after the processors: Prometheus scraping them (when installed), the books check.
BOOKS_PORT = int(os.environ.get("ORDEROPS_BOOKS_PORT", "6106"))
WATCHERS = (Processor("prometheus", "orderops.ops.monitoring", int(os.environ.get("ORDEROPS_PROMETHEUS_PORT", "9090")),
                      health_path="/-/ready", needs_program="prometheus"),
            # order-state's, returns' and the provider's books compared every few minutes, for Prometheus
            Processor("books", "orderops_tools.books", BOOKS_PORT, ("--port", str(BOOKS_PORT)), health_path="/metrics"))
# The upstream systems' stand-in, started after the processors (ORDEROPS_SIMULATE_ARGS overrides its arguments).
# About five simulated days a minute, at most 40 events/s: within a minute of `make run` the
# console has split shipments, backorders, returns and escalations to look at.
SIMULATE_ARGS = "--orders 100000 --rate 40 --compression 14400 --order-interval 3600"
FEEDERS = (Processor("simulator", "orderops_tools.simulator", NO_WEB,
                     tuple(os.environ.get("ORDEROPS_SIMULATE_ARGS", SIMULATE_ARGS).split())),)


def everything() -> list[Processor]:
    return [*COMPANIONS, *map(Processor, PROCESSORS), *WATCHERS, *FEEDERS]


def run_dir() -> Path:
    return Path(os.environ.get("ORDEROPS_RUN_DIR", default_run_dir()))


def _pid_file(p: Processor) -> Path:
    return run_dir() / "pids" / f"{p.name}.pid"


def _log_file(p: Processor) -> Path:
    return run_dir() / "logs" / f"{p.name}.log"


def running_pid(p: Processor) -> int | None:
    try:
        pid = int(_pid_file(p).read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def healthy(p: Processor) -> bool:
    if p.web_port == NO_WEB:
        return running_pid(p) is not None
    try:
        with urllib.request.urlopen(f"{p.url}{p.health_path}", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def installed() -> list[Processor]:
    return [p for p in everything() if p.installed]


def _environment(p: Processor) -> dict[str, str]:
    """In secure mode each connects as its own principal (a processor as itself, the simulator as
    the systems it plays, the ingest as itself); the other companions and the watchers get no Kafka
    credentials at all."""
    from orderops.ops.security import INGEST as INGEST_PRINCIPAL
    from orderops.ops.security import SIMULATOR, KafkaSecurity, principal_env, secrets_dir

    env = dict(os.environ)
    if not KafkaSecurity.from_env().secure:
        return env
    for key in [k for k in env if k.startswith(("KAFKA_SASL_", "KAFKA_SSL_", "KAFKA_SECURITY_"))]:
        del env[key]
    principal = p.name if p.name in PROCESSORS else SIMULATOR if p in FEEDERS else \
        INGEST_PRINCIPAL if p == INGEST else None
    if principal:
        env.update(principal_env(principal, secrets_dir(run_dir())))
    return env


def start(timeout: float = 120) -> list[str]:
    lines = []
    for p in installed():
        if running_pid(p):
            where = f"log: {_log_file(p)}" if p.port == NO_WEB else p.url
            lines.append(f"{p.name:12} already running (pid {running_pid(p)})  {where}")
            continue
        _pid_file(p).parent.mkdir(parents=True, exist_ok=True)
        _log_file(p).parent.mkdir(parents=True, exist_ok=True)
        with open(_log_file(p), "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", p.package, *p.args], stdout=log, env=_environment(p),
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        _pid_file(p).write_text(str(process.pid))
        deadline = time.monotonic() + timeout
        while not healthy(p):
            if process.poll() is not None:
                raise RuntimeError(f"{p.name} exited with {process.returncode} during start-up; see {_log_file(p)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{p.name} not ready after {timeout:.0f}s; see {_log_file(p)}")
            time.sleep(0.5)
        where = f"{p.url}{p.health_path}" if p.web_port != NO_WEB else "(no web port)"
        lines.append(f"{p.name:12} ready (pid {process.pid})  {where}  log {_log_file(p)}")
    return lines


def stop(timeout: float = 60) -> list[str]:
    lines = []
    for p in reversed(everything()):
        pid = running_pid(p)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while running_pid(p) and time.monotonic() < deadline:
            time.sleep(0.3)
        if running_pid(p):
            os.kill(pid, signal.SIGKILL)
            lines.append(f"{p.name:12} killed (pid {pid}) after ignoring SIGTERM for {timeout:.0f}s")
        else:
            lines.append(f"{p.name:12} stopped (pid {pid})")
        _pid_file(p).unlink(missing_ok=True)
    return lines


def status() -> list[str]:
    lines = []
    for p in everything():
        if not p.installed:
            lines.append(f"{p.name:12} not installed" + (f" ({p.needs_program} not on PATH)" if p.needs_program else ""))
            continue
        pid = running_pid(p)
        state = "not running" if pid is None else ("ready" if healthy(p) else "running, not ready")
        where = p.url if p.web_port != NO_WEB else f"log {_log_file(p)}"
        lines.append(f"{p.name:12} {state}{f' (pid {pid})' if pid else ''}  {where}")
    return lines


def metric_totals(url: str, names: Iterable[str], timeout: float = 2) -> dict[str, float] | None:
    """Each named metric family's samples on the /metrics page at ``url``, summed (without the
    ``_created`` timestamps); None if the page does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return None
    totals = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(text):
        if family.name in totals:
            totals[family.name] += sum(s.value for s in family.samples if not s.name.endswith("_created"))
    return totals


def figures() -> str:
    """One line of what the running system has done so far, from the processors' /metrics."""
    wanted = {"orderops_events_processed": "events processed", "orderops_escalations_open": "open escalations",
              "orderops_notifications": "notifications", "orderops_dead_lettered": "dead-lettered"}
    totals = dict.fromkeys(wanted.values(), 0.0)
    for p in map(Processor, PROCESSORS):
        for name, value in (metric_totals(p.url, wanted) or {}).items():
            totals[wanted[name]] += value
    return ", ".join(f"{value:,.0f} {label}" for label, value in totals.items())


def watch(interval: float = 15.0) -> list[str]:
    """Print the figures every ``interval`` seconds until Ctrl-C (or SIGTERM); then stop every
    processor and the broker, as `make stop` does."""
    stopping = []

    def request_stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stopping.append(signum)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print("Ctrl-C stops everything (processors, simulator, Prometheus, registry, broker); state stays in .run/",
          flush=True)
    next_at = time.monotonic()
    while not stopping:
        if time.monotonic() >= next_at:
            print(time.strftime("%H:%M:%S"), figures(), flush=True)
            next_at = time.monotonic() + interval
        time.sleep(0.2)
    print("\nstopping orderops ...", flush=True)
    print("\n".join(stop()), flush=True)
    from orderops.ops.brokers import KAFKA_SCRIPT, REGISTRY_SCRIPT

    subprocess.run([str(REGISTRY_SCRIPT), "down"], check=False)
    if not os.environ.get("KAFKA_BOOTSTRAP"):
        subprocess.run([str(KAFKA_SCRIPT), "down"], check=False)
    return []
