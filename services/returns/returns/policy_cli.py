"""``orderops policies publish|list|check``: return-policy files to the compacted returns.policies.

    orderops policies check   [FILE ...]   validate (default: policies/*.yaml of the repository)
    orderops policies publish [FILE ...]   validate, check immutability, publish what is new
    orderops policies list                 what returns.policies holds
    orderops policies drop-unreadable      tombstone each version whose latest record cannot be read
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import UTC, datetime
from pathlib import Path

from orderops.codec.avro import Codec
from orderops.model.catalog import RETURNS_POLICIES
from orderops.ops.paths import source_root
from orderops.ops.security import client_config
from orderops.ops.settings import PRODUCER_DEFAULTS, KafkaSettings
from orderops.runtime.globalview import BrokerUnavailable
from returns.policy import Policy, PolicyFileError, check_publishable, load_policy


def default_files() -> list[Path]:
    return sorted(((source_root() or Path.cwd()) / "policies").glob("*.yaml"))


def _load(files: list[str]) -> list[Policy]:
    paths = [Path(f) for f in files] or default_files()
    if not paths:
        raise PolicyFileError("no policy files given and none in policies/")
    return [load_policy(p) for p in paths]


def _published(bootstrap: str) -> dict[str, Policy]:
    from returns.processor import published_policies

    return published_policies(bootstrap, told=lambda text: print(f"policies: {text}", file=sys.stderr))


def check(args: argparse.Namespace) -> int:
    for policy in _load(args.files):
        print(f"ok  {policy.ref}  effective {policy.effective_from.isoformat()}  {policy.description}")
    return 0


def publish(args: argparse.Namespace) -> int:
    from confluent_kafka import Producer

    policies = _load(args.files)
    bootstrap = KafkaSettings.from_env().bootstrap
    published = _published(bootstrap)
    before, now = dict(published), datetime.now(UTC)
    problems, new = [], []
    for policy in sorted(policies, key=lambda p: (p.policy_id, p.version)):
        problem = check_publishable(policy, published, before, now)
        if problem and args.backdate:
            marked = dataclasses.replace(policy, backdated=True)
            if check_publishable(marked, published, before, now) is None:
                policy, problem = marked, None
        if problem:
            problems.append(problem)
        elif policy.ref not in published:
            new.append(policy)
            published[policy.ref] = policy
    if problems:
        print("refused, nothing published:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    codec, producer = Codec(), Producer(client_config(bootstrap, **PRODUCER_DEFAULTS))
    for policy in new:
        producer.produce(RETURNS_POLICIES.name, key=policy.ref.encode(),
                         value=codec.encode(RETURNS_POLICIES.value_schema, policy.to_record()))
    if producer.flush(30):
        print("policies: the broker did not acknowledge every policy within 30 s; run the command again",
              file=sys.stderr)
        return 1
    for policy in new:
        marked = "  (backdated)" if policy.backdated else ""
        print(f"published {policy.ref}  effective {policy.effective_from.isoformat()}{marked}")
    print(f"policies: {len(new)} published, {len(policies) - len(new)} already published unchanged")
    return 0


def list_published(args: argparse.Namespace) -> int:
    for ref, policy in sorted(_published(KafkaSettings.from_env().bootstrap).items()):
        print(f"{ref:16} effective {policy.effective_from.isoformat()}  published "
              f"{policy.published_at.isoformat() if policy.published_at else '?'}"
              f"{'  (backdated)' if policy.backdated else ''}  {policy.description}")
    return 0


def drop_unreadable_versions(args: argparse.Namespace) -> int:
    from orderops.runtime.globalview import drop_unreadable

    dropped = drop_unreadable(KafkaSettings.from_env().bootstrap, RETURNS_POLICIES, convert=Policy.from_record)
    for bad in dropped:
        print(f"removed {bad.describe()}")
    print(f"policies: {len(dropped)} unreadable record(s) removed")
    return 0


def what_if(args: argparse.Namespace) -> int:
    """Judge the return requests of a time range by a draft policy and by the published ones, from
    returns' input topics, and print every decision and refund amount that would change."""
    from orderops.ops.settings import ServiceSettings
    from orderops.replay.rebuild import replay
    from orderops.replay.topicreader import read_messages
    from returns import whatif
    from returns.domain import Policies
    from returns.processor import INPUTS, definition, policy_id

    draft = load_policy(Path(args.draft))
    bootstrap = KafkaSettings.from_env().bootstrap
    published = Policies(_published(bootstrap), policy_id())
    settings = ServiceSettings.from_env("returns", 0)
    messages = read_messages(bootstrap, list(INPUTS), progress=not args.quiet)
    keep = (lambda order_id: order_id == args.order) if args.order else (lambda order_id: True)
    start = datetime.fromisoformat(args.since) if args.since else None
    end = datetime.fromisoformat(args.until) if args.until else None
    runs = {}
    for name, policies in (("published", published), ("draft", whatif.as_draft_in_force(draft))):
        processor = definition(settings, policies=lambda policies=policies: policies)
        runs[name] = whatif.judgements(replay(processor, messages, clock="event", keep=keep), start, end)
    found = whatif.changes(runs["published"], runs["draft"])
    for change in found:
        print("  " + change.describe())
    counted = whatif.summary(runs["published"], found)
    print(f"what-if {draft.ref} (as if in force for every order) against the published policies: "
          + ", ".join(f"{v} {k}" for k, v in counted.items()) + ". Nothing was published.")
    return 0


def register(groups) -> None:
    commands = groups.add_parser("policies", help="return policies (returns service)").add_subparsers(
        dest="command", required=True)
    for name, run, text in (("check", check, "validate policy files"), ("publish", publish, "publish what is new")):
        command = commands.add_parser(name, help=text)
        command.add_argument("files", nargs="*", help="policy files (default: policies/*.yaml)")
        if name == "publish":
            command.add_argument("--backdate", action="store_true",
                                 help="allow a version whose effective_from is in the past; it records that it was "
                                      "backdated and every decision by it shows it")
        command.set_defaults(run=_guarded(run))
    commands.add_parser("list", help="what returns.policies holds").set_defaults(run=_guarded(list_published))
    commands.add_parser("drop-unreadable", help="tombstone each key of returns.policies whose latest record cannot be "
                        "read (a good version may then be published under it)").set_defaults(
        run=_guarded(drop_unreadable_versions))
    add_what_if(commands)


def add_what_if(commands) -> None:
    """``what-if``, under ``orderops policies`` and ``orderops replay`` alike."""
    command = commands.add_parser(
        "what-if", help="judge past return requests by a draft policy; report what would change (publishes nothing)",
        description="Replays returns' input topics twice with returns' own decision code — once with the published "
                    "policies, once with the draft in force for every order — and prints each return request whose "
                    "decision (authorized / rejected / needs review) or refund amount would change.")
    command.add_argument("draft", help="the draft policy file (YAML, as in policies/)")
    command.add_argument("--since", help="requests at or after this event time (ISO 8601)")
    command.add_argument("--until", help="requests before this event time (ISO 8601)")
    command.add_argument("--order", help="only this order")
    command.add_argument("--quiet", action="store_true", help="no progress on stderr")
    command.set_defaults(run=_guarded(what_if))


def _guarded(run):
    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except PolicyFileError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 1
        except BrokerUnavailable as exc:
            print(f"policies: {exc}", file=sys.stderr)
            return 1
    return guarded
