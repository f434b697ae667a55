"""Two fixes to Faust: never commit past a message that was not processed; and a producer flush
that waits for every buffered message (``_flush_buffer``), so a commit, and the notifier's ledger
write before an e-mail, wait for the table changelog records before them.

Faust commits, per partition, the end of the first run of consecutive acknowledged offsets. It
checks that the run starts where the last commit left off only when there *is* a last commit, and
tests it with ``if committed_offset:`` (so offset 0 counts as none) and ``> 1`` (so one missing
offset slips through). A partition without a committed offset — every partition a new group
reads, and every partition still empty when a processor last committed — whose first message is
dropped (found: at a rebalance right after a restart) gets its later offsets committed, and the
dropped message is never read again. The broker-kill fault test found two PaymentAuthorized
events lost this way (Faust's own, still open: faust-streaming/faust#606).

This keeps Faust's logic and adds the missing rule: the first acknowledged offset must be the
partition's next offset to commit (the committed one, or where an uncommitted partition starts:
its earliest offset, as ``consumer_auto_offset_reset="earliest"`` reads it). Otherwise nothing
is committed for the partition — as Faust already does for a partition with a commit — and the
messages after the last commit are read again at the next rebalance or restart; the processors'
apply-once makes those that were processed duplicates, counted as such. (A first version also
sought back at once; the broker-kill test showed Faust's own bookkeeping leaves such gaps after
every restart, and re-reading each of them kept the processors busy re-reading.)
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faust.transport.consumer import Consumer
from faust.transport.producer import ProducerBuffer

log = logging.getLogger("orderops.faustfix")

_original_new_offset = Consumer._new_offset
_original_perform_seek = Consumer.perform_seek
_original_revoked = Consumer.on_partitions_revoked
_STARTS = "_orderops_starts"  # tp -> the offset an uncommitted partition starts at
_REPORTED = "_orderops_reported"  # (tp, offset) pauses already logged


def _starts(consumer: Any) -> dict:
    if not hasattr(consumer, _STARTS):
        setattr(consumer, _STARTS, {})
        setattr(consumer, _REPORTED, set())
    return getattr(consumer, _STARTS)


async def _perform_seek(self: Consumer) -> None:
    """Faust's seek to the committed offsets, and for a partition without a commit a seek to where
    it starts: aiokafka's ``seek_to_committed`` leaves such a partition where the fetcher was, so
    records Faust took and then cleared from the agents' queues (at a rebalance, or as a restarted
    worker recovers) were never read again until the next restart — the 200-order broker-kill test
    lost offset 0 of four ``payments.events`` partitions this way, right after order-state restarted.
    Read again, what was applied is recognised by its event id (a duplicate, counted)."""
    await _original_perform_seek(self)
    starts = _starts(self)
    uncommitted = [tp for tp in self.assignment()
                   if not self._committed_offset.get(tp) and not tp.topic.endswith("-changelog")]
    if uncommitted:
        earliest = await self.earliest_offsets(*uncommitted)
        for tp in uncommitted:
            starts[tp] = earliest.get(tp) or 0
            await self.seek(tp, starts[tp])


async def _on_partitions_revoked(self: Consumer, revoked: set) -> None:
    starts, reported = _starts(self), getattr(self, _REPORTED)
    for tp in revoked:
        starts.pop(tp, None)
    reported.difference_update({said for said in reported if said[0] in revoked})
    await _original_revoked(self, revoked)


def expected_first(committed: int | None, start: int | None) -> int | None:
    """The offset the next commit of a partition must begin at (``None``: unknown)."""
    return committed if committed is not None else start


def next_to_commit(consumer: Consumer, tp: Any) -> int | None:
    """The partition's first offset not yet committed (``None``: not known yet)."""
    return expected_first(consumer._committed_offset.get(tp), _starts(consumer).get(tp))


def _new_offset(self: Consumer, tp: Any) -> int | None:
    acked = self._acked[tp]
    expected = expected_first(self._committed_offset.get(tp), _starts(self).get(tp))
    if acked and expected is not None:
        # The gap Faust fills itself (offsets it knows hold no message) counts as acknowledged.
        filled = min(set(acked) | {o for i in self._gap[tp].overlap(0, max(acked) + 1) for o in range(i.begin, i.end)})
        if filled > expected:
            _say_paused(self, tp, expected, filled)
            return None
    return _original_new_offset(self, tp)


def _say_paused(consumer: Consumer, tp: Any, expected: int, first_acked: int) -> None:
    said = getattr(consumer, _REPORTED)
    if (tp, expected) in said:
        return
    said.add((tp, expected))
    log.warning("%s[%d]: offset %d was not acknowledged but later ones were (from %d): commits for this partition "
                "wait there, so nothing is skipped; what follows it is read again after the next rebalance or "
                "restart (and counted as duplicates)", tp.topic, tp.partition, expected, first_acked)


# Faust's conductor, at every record it hands on, waits while its producer's buffer holds more than
# ``max_messages`` (100), and warns "producer buffer full". A processor's completer
# (orderops.writebehind) writes the tables of up to 500 steps at once, each write a changelog record
# in this buffer (the timeline's step writes its view and its entries): under load every completion
# warned (157 times in the bench's minute at 200 events/s), of a buffer the same loop drains at its next turn.
# Its size is bounded by the completer's queue (ORDEROPS_WRITE_BEHIND_DEPTH steps) either way.
BUFFERED_RECORDS_BEFORE_WAITING = 10_000

_original_send_pending = ProducerBuffer._send_pending
_original_buffer_flush = ProducerBuffer.flush
_SENDING = "_orderops_sending"  # messages taken from the buffer and not yet handed to the client


async def _send_pending(self: ProducerBuffer, fut: Any) -> None:
    setattr(self, _SENDING, getattr(self, _SENDING, 0) + 1)
    try:
        await _original_send_pending(self, fut)
    finally:
        setattr(self, _SENDING, getattr(self, _SENDING) - 1)


async def _flush_buffer(self: ProducerBuffer) -> None:
    """Faust's buffer flush returns once no message left the buffer for 0.1 s — while the broker
    is away, at once — and the client's flush then waits only for what reached the client. Table
    changelog records wait in this buffer, so a commit (Faust flushes before it commits) or the
    notifier's ledger write before an e-mail went ahead with them still unsent: a worker killed then
    lost them (found: the 20,000-event fault test delivered an e-mail twice, the first attempt's
    ledger never having reached the changelog). This waits until every buffered message reached
    the client, whose flush then waits for the broker's acks. A stopping buffer flushes as Faust's."""
    while self.state == "running" and (self.size or getattr(self, _SENDING, 0)):
        self.message_sent.clear()
        try:
            async with asyncio.timeout(1.0):  # not wait_for: a task per wait, 5% of the notifier's CPU
                await self.message_sent.wait()
        except TimeoutError:
            continue
    await _original_buffer_flush(self)


def install() -> None:
    """Patch Faust's consumer and producer buffer (idempotent)."""
    if Consumer._new_offset is not _new_offset:
        Consumer._new_offset = _new_offset
        Consumer.perform_seek = _perform_seek
        Consumer.on_partitions_revoked = _on_partitions_revoked
        ProducerBuffer._send_pending = _send_pending
        ProducerBuffer.flush = _flush_buffer
        ProducerBuffer.max_messages = BUFFERED_RECORDS_BEFORE_WAITING
