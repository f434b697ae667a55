"""A processor's state directory runs out of space under load (a small tmpfs of the test's own,
filled up while the simulator plays): the processor stops with an error that says what happened
and what to do, or keeps going; once space returns, it is started again (if it stopped) and its
table and every record it wrote are what one clean replay of its inputs gives: nothing lost, nothing
applied twice.

Needs the right to mount a tmpfs (root, as on the CI machine); without it the test is skipped and
says so.
"""

from __future__ import annotations

import asyncio
import errno
import io
import subprocess
import threading
import time
from datetime import UTC, datetime

import pytest
from orderops_tools import faultreport
from orderops_tools.simulator import Config, play
from orderops_tools.testing import PrivateBroker, orderops_cli, rebuilt_identically, start_processors

from orderops.model import catalog

pytestmark = [pytest.mark.faults, pytest.mark.broker]
START = datetime(2026, 9, 1, 8, tzinfo=UTC)
ORDERS = 30
DISK_MB = 64  # the state directory's size: room for the databases as they open, not for a run


def fill(directory, keep_bytes: int = 0) -> int:
    """Write a file into ``directory`` until the file system is full (less ``keep_bytes``); its size."""
    written, chunk = 0, b"\0" * (1 << 20)
    with open(directory / "filler", "wb", buffering=0) as filler:
        while True:
            try:
                written += filler.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    if keep_bytes:
        with open(directory / "filler", "r+b") as filler:
            filler.truncate(max(0, written - keep_bytes))
    return written


async def test_a_full_state_disk_loses_nothing_once_space_returns(run_id, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(state)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the state directory: {mounted.stderr.strip()}")
    broker = PrivateBroker(tmp_path / "broker")
    processes = {}
    try:
        bootstrap = broker.start()
        processes = start_processors(bootstrap, tmp_path, names=(catalog.ORDER_STATE,))
        order_state = processes[catalog.ORDER_STATE]
        await order_state.wait_ready(timeout=180)

        fill(state)
        config = Config(seed=int(run_id, 16) % 10**6, orders=ORDERS, rate=200, compression=10**9, start=START,
                        order_gap=0.2)
        player = threading.Thread(target=play, args=(config, bootstrap, io.StringIO()), daemon=True)
        player.start()
        await asyncio.to_thread(player.join, 300)
        assert not player.is_alive(), "the simulator did not finish"

        # Full: it stops with an error that says so, or it goes on; it must not hang quietly.
        deadline = time.monotonic() + 60
        while order_state.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(1)
        log = order_state.log_path.read_text(errors="replace")
        stopped = order_state.process.poll() is not None
        if stopped:
            assert "The disk under the processor's state (ORDEROPS_DATA_DIR) is full" in log, log[-3000:]

        (state / "filler").unlink()  # space returns
        if stopped:
            order_state.start()
        await order_state.wait_ready(timeout=180)

        deadline = time.monotonic() + 180
        while True:
            result = orderops_cli(bootstrap, "replay", "rebuild", catalog.ORDER_STATE, "--clock", "wall")
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(3)  # still catching up
        orders, records = rebuilt_identically(result)
        assert orders == ORDERS and records > ORDERS, result.stdout
        print(f"disk full: order-state {'stopped' if stopped else 'went on'}; after space returned, {orders} orders "
              f"and {records} records identical to a clean replay")
        faultreport.record("a full disk under order-state's state directory (tests/faults/test_disk_full.py)", {
            "state directory": f"a {DISK_MB} MB tmpfs, filled before the traffic", "orders": ORDERS,
            "what order-state did": "stopped with the CRITICAL line that says the disk is full" if stopped else "went on",
            "after space returned, against one clean replay": f"{orders} orders' state and {records} records identical"})
    finally:
        for process in processes.values():
            process.stop()
        broker.stop()
        subprocess.run(["umount", "-l", str(state)], capture_output=True)
