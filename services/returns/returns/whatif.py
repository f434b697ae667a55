"""The policy what-if: the same return requests judged by the published policies and by a draft,
decision by decision. Pure: it compares two offline replays (orderops.replay.rebuild) of returns' inputs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal

from orderops.replay.rebuild import Rebuilt
from returns.domain import Policies
from returns.policy import Policy


@dataclass(frozen=True)
class Judgement:
    order_id: str
    return_id: str
    requested_at: datetime
    decision: str
    policy: str
    refunded: Decimal  # commanded for this return (a refund replaced by store credit counts once)
    reason: str  # the failing or reviewing rules' details, or "every rule passed"


@dataclass(frozen=True)
class VerdictChange:
    before: Judgement
    after: Judgement

    def describe(self) -> str:
        b, a = self.before, self.after
        parts = [f"{b.decision} -> {a.decision}" if b.decision != a.decision else f"{b.decision} (unchanged)"]
        if b.refunded != a.refunded:
            parts.append(f"refund {b.refunded:.2f} -> {a.refunded:.2f}")
        why = a.reason if a.decision != "AUTHORIZED" else b.reason
        return f"order {b.order_id} return {b.return_id} ({b.requested_at:%Y-%m-%d}): {'; '.join(parts)}  [{why}]"


def as_draft_in_force(draft: Policy) -> Policies:
    """Only the draft, in force for every order whatever its date: what if it had always applied."""
    return Policies({draft.ref: replace(draft, effective_from=datetime(1970, 1, 1, tzinfo=UTC))}, draft.policy_id)


def judgements(rebuilt: Rebuilt, start: datetime | None = None, end: datetime | None = None) -> dict[tuple, Judgement]:
    found = {}
    for order_id, state in rebuilt.states.items():
        for ret in state.returns:
            if (start and ret.requested_at < start) or (end and ret.requested_at >= end) or not ret.decision:
                continue
            refunded = sum((r.amount for r in state.refunds if r.return_id == ret.return_id and r.status != "fell_back"),
                           Decimal(0))
            details = [t["detail"] for t in ret.trace if t["outcome"] != "pass"]
            found[(order_id, ret.return_id)] = Judgement(order_id, ret.return_id, ret.requested_at, ret.decision,
                                                         ret.policy, refunded, "; ".join(details) or "every rule passed")
    return found


def changes(before: dict[tuple, Judgement], after: dict[tuple, Judgement]) -> list[VerdictChange]:
    return [VerdictChange(before[k], after[k]) for k in sorted(before) if k in after
            and (before[k].decision, before[k].refunded) != (after[k].decision, after[k].refunded)]


def summary(before: dict[tuple, Judgement], found: list[VerdictChange]) -> Counter:
    counted: Counter = Counter({"requests judged": len(before), "changed": len(found)})
    for change in found:
        if change.before.decision != change.after.decision:
            counted[f"{change.before.decision} -> {change.after.decision}"] += 1
        if change.before.refunded != change.after.refunded:
            counted["refund amount changed"] += 1
    return counted
