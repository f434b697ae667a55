"""Return policies as versioned data (pure): the model, the YAML files, and their validation.

A policy version is immutable once published. An order is judged by the version of its policy
that was in force when the order was placed (the highest version whose ``effective_from`` is at
or before the placement); publishing requires a version's ``effective_from`` to be later than
every earlier version's, so a replay always finds the same version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

import yaml

CHANNELS = ("CARD", "GIFT_CARD", "CASH_ON_DELIVERY", "BUY_NOW_PAY_LATER", "STORE_CREDIT", "BANK_TRANSFER")
METHODS = ("ORIGINAL_INSTRUMENT", "STORE_CREDIT", "BANK_TRANSFER", "PROVIDER")
OUTCOMES = ("AS_EXPECTED", "DAMAGED", "WRONG_ITEM", "MISSING")
REASONS = ("DAMAGED", "WRONG_ITEM", "NOT_AS_DESCRIBED", "SIZE_OR_FIT", "NO_LONGER_NEEDED", "ARRIVED_LATE", "OTHER")
PREDICATES = ("always", "reason_is_no_longer_needed", "line_value_over_500")


@dataclass(frozen=True)
class ConditionRule:
    rule_id: str
    description: str
    when: str
    categories: tuple[str, ...]


@dataclass(frozen=True)
class Route:
    method: str
    sla_hours: int
    alternative: str | None = None


@dataclass(frozen=True)
class Policy:
    policy_id: str
    version: int
    effective_from: datetime
    description: str
    default_window_days: int
    category_windows: dict[str, int]
    final_sale_categories: tuple[str, ...]
    condition_rules: tuple[ConditionRule, ...]
    restocking_fee_percent: int
    restocking_fee_exempt_reasons: tuple[str, ...]
    max_returns_per_customer_90d: int
    inspection_shares: dict[str, int]
    refund_routes: dict[str, Route]
    store_credit_after_capture_days: int
    max_refund_attempts: int
    published_at: datetime | None = field(default=None, compare=False)
    backdated: bool = field(default=False, compare=False)  # see check_publishable

    @property
    def ref(self) -> str:
        return f"{self.policy_id}@{self.version}"

    def window_days(self, category: str) -> int:
        return self.category_windows.get(category, self.default_window_days)

    def share(self, outcome: str) -> Decimal:
        return Decimal(self.inspection_shares.get(outcome, 0)) / 100

    def to_record(self) -> dict[str, Any]:
        """The Avro record on returns.policies."""
        return {
            "policy_id": self.policy_id, "version": self.version, "effective_from": self.effective_from,
            "published_at": self.published_at or datetime.now(UTC), "description": self.description,
            "default_window_days": self.default_window_days,
            "category_windows": [{"category": c, "days": d} for c, d in sorted(self.category_windows.items())],
            "final_sale_categories": list(self.final_sale_categories),
            "condition_rules": [{"rule_id": r.rule_id, "description": r.description, "when": r.when,
                                 "categories": list(r.categories)} for r in self.condition_rules],
            "restocking_fee_percent": self.restocking_fee_percent,
            "restocking_fee_exempt_reasons": list(self.restocking_fee_exempt_reasons),
            "max_returns_per_customer_90d": self.max_returns_per_customer_90d,
            "inspection_shares": [{"outcome": o, "share_percent": s} for o, s in sorted(self.inspection_shares.items())],
            "refund_routes": [{"channel": c, "method": r.method, "alternative": r.alternative, "sla_hours": r.sla_hours}
                              for c, r in sorted(self.refund_routes.items())],
            "store_credit_after_capture_days": self.store_credit_after_capture_days,
            "max_refund_attempts": self.max_refund_attempts, "backdated": self.backdated,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Policy:
        """The version a record on returns.policies holds; ``PolicyRecordError`` if it is one no
        decision could be taken by (a record written past ``orderops policies publish``)."""
        policy = cls._from_fields(r)
        problems = policy.record_problems()
        if problems:
            raise PolicyRecordError(f"{policy.ref}: " + "; ".join(problems))
        return policy

    def record_problems(self) -> list[str]:
        problems = []
        if self.version < 1:
            problems.append(f"version {self.version} is not positive")
        if not 0 <= self.restocking_fee_percent <= 100:
            problems.append(f"restocking_fee_percent {self.restocking_fee_percent} is not within 0..100")
        if self.max_refund_attempts < 1:
            problems.append(f"max_refund_attempts {self.max_refund_attempts} is not positive")
        problems += [f"inspection share {o} = {p} % is not within 0..100" for o, p in self.inspection_shares.items()
                     if not 0 <= p <= 100]
        problems += [f"condition {c.rule_id}: unknown predicate {c.when!r} (known: {', '.join(PREDICATES)})"
                     for c in self.condition_rules if c.when not in PREDICATES]
        return problems

    @classmethod
    def _from_fields(cls, r: dict[str, Any]) -> Policy:
        return cls(
            r["policy_id"], r["version"], r["effective_from"], r["description"], r["default_window_days"],
            {w["category"]: w["days"] for w in r["category_windows"]}, tuple(r["final_sale_categories"]),
            tuple(ConditionRule(c["rule_id"], c["description"], c["when"], tuple(c["categories"]))
                  for c in r["condition_rules"]),
            r["restocking_fee_percent"], tuple(r["restocking_fee_exempt_reasons"]), r["max_returns_per_customer_90d"],
            {s["outcome"]: s["share_percent"] for s in r["inspection_shares"]},
            {x["channel"]: Route(x["method"], x["sla_hours"], x["alternative"]) for x in r["refund_routes"]},
            r["store_credit_after_capture_days"], r["max_refund_attempts"], r["published_at"], r.get("backdated", False))


def in_force(policies: dict[str, Policy], policy_id: str, at: datetime) -> Policy | None:
    """The version of ``policy_id`` in force at ``at`` (``policies`` keyed by ``id@version``)."""
    candidates = [p for p in policies.values() if p.policy_id == policy_id and p.effective_from <= at]
    return max(candidates, key=lambda p: p.version, default=None)


# -- files ----------------------------------------------------------------------------------------

class PolicyRecordError(ValueError):
    """A record on returns.policies that decodes but holds no usable policy."""


class PolicyFileError(Exception):
    """A policy file that cannot be published, with the file, line and reason."""


class _Checker:
    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        try:
            root = yaml.compose(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark else 1
            raise PolicyFileError(f"{path}:{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
        if not isinstance(root, yaml.MappingNode):
            raise PolicyFileError(f"{path}:1: a policy file is a mapping of settings")
        self.root: yaml.MappingNode = root

    def fail(self, node: yaml.Node | None, reason: str) -> NoReturn:
        line = node.start_mark.line + 1 if node is not None else 1
        raise PolicyFileError(f"{self.path}:{line}: {reason}")

    def mapping(self, node: yaml.Node, where: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, f"{where} must be a mapping")
        return {k.value: (k, v) for k, v in node.value}

    def field(self, node: yaml.Node, key: str, kind: type, where: str, optional: bool = False,
              default: Any = None) -> Any:
        entries = self.mapping(node, where)
        if key not in entries:
            if optional:
                return default
            self.fail(node, f"{where}: missing '{key}'")
        return self.scalar(entries[key][1], kind, f"{where}.{key}" if where != "policy" else key)

    def scalar(self, node: yaml.Node, kind: type, where: str) -> Any:
        value = yaml.safe_load(yaml.serialize(node))
        if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            self.fail(node, f"{where} must be a whole number ≥ 0, not {value!r}")
        if kind is str and (not isinstance(value, str) or not value.strip()):
            self.fail(node, f"{where} must be a non-empty text, not {value!r}")
        if kind is datetime:
            if not isinstance(value, datetime):
                self.fail(node, f"{where} must be a timestamp like 2026-12-01T00:00:00Z, not {value!r}")
            if value.tzinfo is None:
                self.fail(node, f"{where} needs a time zone (e.g. a trailing Z)")
        if kind is list and not isinstance(value, list):
            self.fail(node, f"{where} must be a list")
        return value

    def one_of(self, node: yaml.Node | None, value: str, allowed: tuple[str, ...], where: str) -> str:
        if value not in allowed:
            self.fail(node, f"{where} is {value!r}; allowed: {', '.join(allowed)}")
        return value


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file; ``PolicyFileError`` names the line and the reason."""
    c = _Checker(path, path.read_text())
    root, top = c.root, c.mapping(c.root, "policy")
    known = {"policy_id", "version", "effective_from", "description", "return_window_days", "final_sale_categories",
             "condition_rules", "restocking_fee", "max_returns_per_customer_90d", "inspection_refund_share",
             "refund_routes", "store_credit_after_capture_days", "max_refund_attempts"}
    for key, (key_node, _) in top.items():
        if key not in known:
            c.fail(key_node, f"unknown setting '{key}' (known: {', '.join(sorted(known))})")
    policy_id = c.field(root, "policy_id", str, "policy")
    version = c.field(root, "version", int, "policy")
    if version < 1:
        c.fail(top["version"][1], "version starts at 1")
    windows_node = top.get("return_window_days", (None, None))[1]
    if windows_node is None:
        c.fail(root, "missing 'return_window_days'")
    default_window = c.field(windows_node, "default", int, "return_window_days")
    by_category = {}
    entries = c.mapping(windows_node, "return_window_days")
    if "by_category" in entries:
        for cat, (_, days_node) in c.mapping(entries["by_category"][1], "return_window_days.by_category").items():
            by_category[cat] = c.scalar(days_node, int, f"return_window_days.by_category.{cat}")
    rules = []
    if "condition_rules" in top:
        rules_node = top["condition_rules"][1]
        if not isinstance(rules_node, yaml.SequenceNode):
            c.fail(rules_node, "condition_rules must be a list")
        for i, rule in enumerate(rules_node.value):
            where = f"condition_rules[{i}]"
            when = c.field(rule, "when", str, where)
            c.one_of(c.mapping(rule, where)["when"][1], when, PREDICATES, f"{where}.when")
            rules.append(ConditionRule(c.field(rule, "id", str, where), c.field(rule, "description", str, where), when,
                                       tuple(c.field(rule, "categories", list, where, optional=True, default=[]))))
    fee_node = top.get("restocking_fee", (None, None))[1]
    fee = c.field(fee_node, "percent", int, "restocking_fee") if fee_node is not None else 0
    if fee > 100:
        c.fail(fee_node, "restocking_fee.percent cannot exceed 100")
    exempt = c.field(fee_node, "exempt_reasons", list, "restocking_fee", optional=True, default=[]) if fee_node else []
    for reason in exempt:
        c.one_of(fee_node, reason, REASONS, "restocking_fee.exempt_reasons")
    shares = {}
    if "inspection_refund_share" not in top:
        c.fail(root, "missing 'inspection_refund_share' (what share each inspection outcome refunds)")
    for outcome, (outcome_node, share_node) in c.mapping(top["inspection_refund_share"][1],
                                                         "inspection_refund_share").items():
        c.one_of(outcome_node, outcome, OUTCOMES, "inspection_refund_share")
        shares[outcome] = c.scalar(share_node, int, f"inspection_refund_share.{outcome}")
        if shares[outcome] > 100:
            c.fail(share_node, f"inspection_refund_share.{outcome} is a percentage: at most 100")
    routes = {}
    if "refund_routes" not in top:
        c.fail(root, "missing 'refund_routes' (where refunds of each payment channel go)")
    for channel, (channel_node, route_node) in c.mapping(top["refund_routes"][1], "refund_routes").items():
        c.one_of(channel_node, channel, CHANNELS, "refund_routes")
        where = f"refund_routes.{channel}"
        method = c.field(route_node, "method", str, where)
        c.one_of(c.mapping(route_node, where)["method"][1], method, METHODS, f"{where}.method")
        alternative = c.field(route_node, "alternative", str, where, optional=True)
        if alternative is not None:
            c.one_of(c.mapping(route_node, where)["alternative"][1], alternative, METHODS, f"{where}.alternative")
        routes[channel] = Route(method, c.field(route_node, "sla_hours", int, where), alternative)
    for channel in CHANNELS:
        if channel not in routes:
            c.fail(top["refund_routes"][1], f"refund_routes has no route for {channel}")
    finals = c.field(root, "final_sale_categories", list, "policy", optional=True, default=[])
    return Policy(
        policy_id=policy_id, version=version, effective_from=c.field(root, "effective_from", datetime, "policy"),
        description=c.field(root, "description", str, "policy", optional=True, default=""),
        default_window_days=default_window, category_windows=by_category, final_sale_categories=tuple(finals),
        condition_rules=tuple(rules), restocking_fee_percent=fee, restocking_fee_exempt_reasons=tuple(exempt),
        max_returns_per_customer_90d=c.field(root, "max_returns_per_customer_90d", int, "policy", optional=True,
                                             default=0),
        inspection_shares=shares, refund_routes=routes,
        store_credit_after_capture_days=c.field(root, "store_credit_after_capture_days", int, "policy", optional=True,
                                                default=0),
        max_refund_attempts=c.field(root, "max_refund_attempts", int, "policy", optional=True, default=3),
    )


def check_publishable(new: Policy, published: dict[str, Policy], before: dict[str, Policy] | None = None,
                      now: datetime | None = None) -> str | None:
    """Why ``new`` cannot be published next to ``published``, or None (also None when it is there
    already, unchanged: publishing is idempotent).

    ``before``: what the topic held before this publishing began, and ``now`` its moment. A version
    whose ``effective_from`` is before ``now`` would take over a time an earlier version of the
    policy already governed; it is refused unless it is marked ``backdated`` (``--backdate``),
    which it then carries on the topic and into every decision by it. Orders keep the version in
    force when they were placed either way (returns records it with the order)."""
    existing = published.get(new.ref)
    if existing is not None:
        return None if existing == new else (
            f"{new.ref} is already published with different content; published versions are immutable: "
            f"give the change a new version")
    earlier = [p for p in published.values() if p.policy_id == new.policy_id and p.version < new.version]
    later = [p for p in published.values() if p.policy_id == new.policy_id and p.version > new.version]
    if later:
        return f"{new.ref}: version {max(p.version for p in later)} is already published; versions only go up"
    latest = max(earlier, key=lambda p: p.version, default=None)
    if latest and new.effective_from <= latest.effective_from:
        return (f"{new.ref} takes effect {new.effective_from.isoformat()}, not after {latest.ref} "
                f"({latest.effective_from.isoformat()}): a version may not rewrite the past")
    governed = [p for p in (before or {}).values() if p.policy_id == new.policy_id and p.version < new.version]
    if now is not None and governed and new.effective_from < now and not new.backdated:
        return (f"{new.ref} takes effect {new.effective_from.isoformat()}, before now ({now.isoformat()}), when "
                f"{max(governed, key=lambda p: p.version).ref} already governed: date it from now on, or publish it "
                "with --backdate (the version records it and every decision by it says so)")
    return None
