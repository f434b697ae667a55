"""``orderops``: the operator's command line.

    orderops topics create      create every catalog topic (idempotent), report differences (--align: fix settings)
    orderops topics list        the catalog: name, partitions, key, schema, writers
    orderops topics drop-unreadable T   tombstone each key of compacted topic T whose latest record does not decode
    orderops broker wait        block until a broker answers a metadata request
    orderops schemas freeze     record current writer schemas under schemas/fingerprints/
    orderops schemas check      every current writer schema is frozen; every schema parses
    orderops schemas show T     topic T's value schema, self-contained, as JSON (what a producer writes with)
    orderops schemas register   every topic's value schema into the Schema Registry (Confluent framing)
    orderops processors start   start every installed processor, detached; wait until ready
    orderops processors stop    SIGTERM them (SIGKILL after 60 s)
    orderops processors status  which run, which are ready, where
    orderops processors watch   print what they have done every 15 s; Ctrl-C stops them and the broker
    orderops users add U ROLE   add a user of the HTTP APIs (or give one a new token); prints the token once
    orderops users remove U     take a user's access away (workers re-read the file: no restart)
    orderops users list         who has access, with which role (never the tokens)
    orderops users dev          for make run: ann (agent), lee (lead), root (admin) if there are no users yet
    orderops ingest             serve upstream events over HTTP (POST /topics/<topic>/events)
    orderops ingest principals add P SYSTEM   a principal sending SYSTEM's events; prints its token once
    orderops ingest principals remove|list|dev
    orderops security setup     secure mode: every principal's SCRAM credential and ACLs, from the catalog (as admin)
    orderops security acls      print every principal's ACLs as the catalog makes them
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from orderops.model import catalog


def _topics_create(args: argparse.Namespace) -> int:
    from orderops.ops.admin import create_topics
    from orderops.ops.settings import KafkaSettings

    settings = KafkaSettings.from_env()
    if args.bootstrap:
        settings = KafkaSettings(args.bootstrap, settings.replication_factor)
    report = create_topics(settings=settings, align=args.align)
    for line in report.lines():
        if args.verbose or not line.startswith("exists"):
            print(line)
    print(f"topics: {len(report.created)} created, {len(report.existing)} already existed, "
          f"{len(report.aligned)} aligned with the catalog, {len(report.differing)} differ from it")
    if report.differing:
        print("Topics that differ were left as they are: `orderops topics create --align` sets their settings "
              "to the catalog's; a partition count needs a planned re-partition. Or change the catalog if it is "
              "wrong.", file=sys.stderr)
        return 1
    return 0


def _topics_list(args: argparse.Namespace) -> int:
    for t in catalog.ALL_TOPICS:
        print(f"{t.name:28} {t.partitions:>3}p {'compact' if t.compacted else 'delete ':7} "
              f"{t.value_schema or '(raw bytes)':50} writers={','.join(t.writers)}")
    return 0


def _topics_drop_unreadable(args: argparse.Namespace) -> int:
    from orderops.ops.settings import KafkaSettings
    from orderops.runtime.globalview import BrokerUnavailable, drop_unreadable

    topic = next((t for t in catalog.ALL_TOPICS if t.name == args.topic and t.compacted), None)
    if topic is None:
        print(f"topics: {args.topic} is not a compacted topic of the catalog (see orderops topics list)",
              file=sys.stderr)
        return 2
    from orderops.runtime.deadletter import read_redrive_entry

    ledger = topic in catalog.REDRIVE_TOPICS.values()  # JSON of the redrive tool, not Avro
    try:
        dropped = drop_unreadable(KafkaSettings.from_env().bootstrap, topic, reader=read_redrive_entry if ledger else None)
    except BrokerUnavailable as exc:
        print(f"topics: {exc}", file=sys.stderr)
        return 1
    for bad in dropped:
        print(f"removed {bad.describe()}")
    print(f"topics: {len(dropped)} unreadable record(s) of {topic.name} removed")
    return 0


def _broker_wait(args: argparse.Namespace) -> int:
    from orderops.ops.admin import wait_for_broker

    def alive() -> bool:
        if not args.pid:
            return True
        try:
            os.kill(args.pid, 0)
            return True
        except ProcessLookupError:
            return False

    try:
        took = wait_for_broker(args.bootstrap, args.timeout, alive)
    except (TimeoutError, RuntimeError) as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return 1
    print(f"broker: {args.bootstrap} answered after {took:.1f}s")
    return 0


def _schemas_freeze(args: argparse.Namespace) -> int:
    from orderops.codec.schemas import SchemaRegistry

    registry = SchemaRegistry()
    written = registry.freeze(writer_schema_names())
    for path in written:
        print(f"frozen {path.name}")
    print(f"schemas: {len(written)} new writer schema(s) frozen")
    return 0


def _schemas_register(args: argparse.Namespace) -> int:
    from orderops.codec.registry import RegistryError, SchemaRegistryClient, subject
    from orderops.codec.schemas import SchemaRegistry

    client = SchemaRegistryClient(args.url) if args.url else SchemaRegistryClient.from_env()
    if client is None:
        print("schemas: give --url or set ORDEROPS_SCHEMA_REGISTRY_URL (make run's: "
              "http://127.0.0.1:6108/apis/ccompat/v7)", file=sys.stderr)
        return 1
    registry = SchemaRegistry()
    try:
        for topic in catalog.ALL_TOPICS:
            if topic.value_schema:
                schema_id = client.id_of(topic.name, registry.get(topic.value_schema))
                print(f"{subject(topic.name):40} id {schema_id:<6} {topic.value_schema}")
    except RegistryError as exc:
        print(f"schemas: {exc}", file=sys.stderr)
        return 1
    return 0


def _schemas_show(args: argparse.Namespace) -> int:
    import json

    from orderops.codec.schemas import SchemaRegistry

    topic = catalog.BY_NAME.get(args.topic)
    if topic is None or not topic.value_schema:
        print(f"schemas: {args.topic!r} is not a topic with an Avro value; `orderops topics list` names them",
              file=sys.stderr)
        return 1
    print(json.dumps(SchemaRegistry().get(topic.value_schema).schema, indent=2))
    return 0


def _schemas_check(args: argparse.Namespace) -> int:
    from orderops.codec.schemas import SchemaRegistry

    registry = SchemaRegistry()
    parsed = [registry.get(name).parsed for name in registry.names()]
    frozen = registry.frozen()
    unfrozen = [n for n in writer_schema_names() if registry.get(n).fingerprint not in frozen]
    if unfrozen:
        print("writer schemas not frozen (run: orderops schemas freeze, and commit schemas/fingerprints/):",
              *unfrozen, sep="\n  ", file=sys.stderr)
        return 1
    print(f"schemas: {len(parsed)} parse; {len(writer_schema_names())} writer schemas frozen")
    return 0


def _processors(args: argparse.Namespace) -> int:
    from orderops.ops import processors

    try:
        lines = getattr(processors, args.command)()
    except RuntimeError as exc:
        print(f"processors: {exc}", file=sys.stderr)
        return 1
    if lines or args.command != "watch":
        print("\n".join(lines) or "no processor is running")
    return 0


def _token_holders(args: argparse.Namespace, path: Path, roles: tuple[str, ...], header: str, noun: str,
                   dev: dict[str, str]) -> int:
    """``add``, ``remove``, ``list`` and ``dev`` on a file of token holders (support users, the
    ingest's principals): ``<holder> <role> sha256(token)`` a line; ``dev``: holder -> role for make run."""
    from orderops.http.auth import UsersFileError, add_user, parse, remove_user

    try:
        if args.command == "add":
            token = add_user(path, args.holder, args.role, roles=roles, header=header)
            print(f"{args.holder} ({args.role}) holds this token; it is shown only now:\n{token}")
        elif args.command == "remove":
            if not remove_user(path, args.holder, roles=roles, header=header):
                print(f"{noun}: {args.holder} is not in {path}", file=sys.stderr)
                return 1
            print(f"{args.holder} removed from {path}")
        elif args.command == "list":
            found = parse(path.read_text(), str(path), roles) if path.exists() else {}
            print("\n".join(f"{holder:24} {role}" for holder, (role, _) in sorted(found.items()))
                  or f"no {noun} in {path}")
        elif args.command == "dev":
            tokens_file = path.with_name(path.name + ".tokens")
            if path.exists() and parse(path.read_text(), str(path), roles):
                print(f"{noun}: {path} has some already (tokens of the development ones: {tokens_file})")
                return 0
            tokens = {holder: add_user(path, holder, role, roles=roles, header=header) for holder, role in dev.items()}
            fd = os.open(tokens_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write("".join(f"{holder} {token}\n" for holder, token in tokens.items()))
            print(f"{noun}: development {', '.join(f'{h} ({r})' for h, r in dev.items())}; tokens in {tokens_file}")
    except UsersFileError as exc:
        print(f"{noun}: {exc}", file=sys.stderr)
        return 1
    return 0


def _users(args: argparse.Namespace) -> int:
    from orderops.http.auth import ROLES, SUPPORT_USERS_HEADER
    from orderops.ops.settings import ServiceSettings

    path = args.file or ServiceSettings.from_env("cli", 0).support_users_file
    return _token_holders(args, path, ROLES, SUPPORT_USERS_HEADER, "users",
                          {"ann": "agent", "lee": "lead", "root": "admin"})


def _ingest(args: argparse.Namespace) -> int:
    from orderops.ingest.app import PRINCIPALS_HEADER, SYSTEMS, IngestSettings, main

    if args.command is None:
        main()
        return 0
    path = args.file or IngestSettings.from_env().principals_file
    return _token_holders(args, path, SYSTEMS, PRINCIPALS_HEADER, "ingest", {f"{s}-dev": s for s in SYSTEMS})


def _security(args: argparse.Namespace) -> int:
    from orderops.ops import security
    from orderops.ops.settings import KafkaSettings, default_run_dir

    if args.command == "acls":
        for principal in security.principals():
            print(f"User:{principal}")
            print("\n".join(f"  ALLOW {grant}" for grant in security.grants(principal)))
        return 0
    if not security.KafkaSecurity.from_env().secure:
        print("security: the environment is not in secure mode (KAFKA_SECURITY_PROTOCOL=SASL_SSL with the admin's "
              "credentials: see docs/security.md)", file=sys.stderr)
        return 1
    directory = security.secrets_dir(Path(os.environ.get("ORDEROPS_RUN_DIR", default_run_dir())))
    for line in security.setup(KafkaSettings.from_env().bootstrap, directory):
        print(f"security: {line}")
    print(f"security: passwords in {directory} (one file per principal, mode 600)")
    return 0


def writer_schema_names() -> list[str]:
    return sorted({t.value_schema for t in catalog.ALL_TOPICS if t.value_schema})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orderops", description="orderops operator tools")
    groups = parser.add_subparsers(dest="group", required=True)

    topics = groups.add_parser("topics", help="topics of the catalog").add_subparsers(dest="command", required=True)
    create = topics.add_parser("create", help="create every catalog topic that is missing")
    create.add_argument("--bootstrap", help="broker address (default: $KAFKA_BOOTSTRAP or 127.0.0.1:9092)")
    create.add_argument("--verbose", action="store_true", help="also list the topics that already existed")
    create.add_argument("--align", action="store_true",
                        help="set existing topics' settings (not partition counts) to the catalog's")
    create.set_defaults(run=_topics_create)
    topics.add_parser("list", help="print the catalog").set_defaults(run=_topics_list)
    drop = topics.add_parser("drop-unreadable", help="tombstone every key of a compacted topic whose latest record "
                             "does not decode (reported by the processors and tools that read it)")
    drop.add_argument("topic", help="a compacted topic of the catalog")
    drop.set_defaults(run=_topics_drop_unreadable)

    broker = groups.add_parser("broker", help="the Kafka broker").add_subparsers(dest="command", required=True)
    wait = broker.add_parser("wait", help="wait until the broker answers a metadata request")
    wait.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    wait.add_argument("--timeout", type=float, default=120)
    wait.add_argument("--pid", type=int, help="give up early if this process exits")
    wait.set_defaults(run=_broker_wait)

    schemas = groups.add_parser("schemas", help="the event contract").add_subparsers(dest="command", required=True)
    schemas.add_parser("freeze", help="record current writer schemas").set_defaults(run=_schemas_freeze)
    schemas.add_parser("check", help="check every writer schema is frozen").set_defaults(run=_schemas_check)
    show = schemas.add_parser("show", help="a topic's value schema, self-contained (every named type inline), as JSON")
    show.add_argument("topic")
    show.set_defaults(run=_schemas_show)
    register = schemas.add_parser("register", help="register every topic's value schema in a Schema Registry "
                                  "(Confluent-compatible API), under <topic>-value")
    register.add_argument("--url", help="the API's base URL (default: $ORDEROPS_SCHEMA_REGISTRY_URL)")
    register.set_defaults(run=_schemas_register)

    procs = groups.add_parser("processors", help="the processors on this machine").add_subparsers(
        dest="command", required=True)
    for command in ("start", "stop", "status", "watch"):
        procs.add_parser(command).set_defaults(run=_processors)

    from orderops.http.auth import ROLES

    users = groups.add_parser("users", help="who may use the HTTP APIs").add_subparsers(dest="command", required=True)
    for command, helptext in (("add", "add a user or give one a new token"), ("remove", "remove a user"),
                              ("list", "list users and roles"), ("dev", "development users for make run")):
        sub = users.add_parser(command, help=helptext)
        if command in ("add", "remove"):
            sub.add_argument("holder", metavar="user_id")
        if command == "add":
            sub.add_argument("role", choices=ROLES)
        sub.add_argument("--file", type=Path, help="the users file (default: $ORDEROPS_SUPPORT_USERS_FILE)")
        sub.set_defaults(run=_users)

    from orderops.ingest.app import SYSTEMS

    ingest = groups.add_parser("ingest", help="upstream events over HTTP: serve (no command), or its principals")
    ingest.set_defaults(run=_ingest, command=None)
    principals = ingest.add_subparsers(dest="command").add_parser(
        "principals", help="who may send events: one principal per token, of one upstream system").add_subparsers(
        dest="command", required=True)
    for command, helptext in (("add", "add a principal or give one a new token"), ("remove", "remove a principal"),
                              ("list", "list principals and their systems"),
                              ("dev", "a development principal per system, for make run")):
        sub = principals.add_parser(command, help=helptext)
        if command in ("add", "remove"):
            sub.add_argument("holder", metavar="principal")
        if command == "add":
            sub.add_argument("role", metavar="system", choices=SYSTEMS)
        sub.add_argument("--file", type=Path, help="the principals file (default: $ORDEROPS_INGEST_PRINCIPALS_FILE)")
        sub.set_defaults(run=_ingest)

    security = groups.add_parser("security", help="Kafka principals and ACLs").add_subparsers(
        dest="command", required=True)
    security.add_parser("setup", help="create principals and ACLs (secure mode, as admin)").set_defaults(run=_security)
    security.add_parser("acls", help="print the ACLs the catalog gives every principal").set_defaults(run=_security)

    # Commands contributed by installed services (entry point group "orderops.commands"), e.g.
    # `orderops policies publish` from the returns service: the kernel never imports a service.
    from importlib.metadata import entry_points

    for entry in entry_points(group="orderops.commands"):
        entry.load()(groups)

    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
