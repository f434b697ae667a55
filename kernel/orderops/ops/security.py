"""Kafka security: how every client connects (from the environment), and who may do what on the
broker — one principal per processor and per upstream system, its ACLs generated from the topic
catalog (readers and writers), never written by hand.

Client settings (all clients: Faust/aiokafka and confluent-kafka, through this module):

    KAFKA_SECURITY_PROTOCOL    PLAINTEXT (default) or SASL_SSL
    KAFKA_SASL_MECHANISM       SCRAM-SHA-512 (default)
    KAFKA_SASL_USERNAME        the principal
    KAFKA_SASL_PASSWORD_FILE   a file holding its password (or KAFKA_SASL_PASSWORD, for platforms
                               that inject secrets as variables)
    KAFKA_SSL_CA_FILE          the CA certificate (PEM) the broker's certificate is checked against

``orderops security setup`` (as the ``admin`` super user) creates every principal's SCRAM
credential and ACLs; ``orderops security acls`` prints them.
"""

from __future__ import annotations

import os
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orderops.model import catalog

ADMIN = "admin"  # the super user: creates topics, users and ACLs; the on-call redrive
SIMULATOR = "simulator"  # plays the storefront, the warehouse, the payment provider and the support desk
SIMULATED_SYSTEMS = (catalog.STOREFRONT, catalog.WAREHOUSE, catalog.PAYMENT_PROVIDER, catalog.SUPPORT_DESK)
INGEST = "ingest"  # `orderops ingest`: writes the upstream systems' events it takes over HTTP, nothing else
MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    mechanism: str = MECHANISM
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None

    @classmethod
    def from_env(cls, given: Mapping[str, str] | None = None) -> KafkaSecurity:
        env: Mapping[str, str] = os.environ if given is None else given
        protocol = env.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
        if protocol not in ("PLAINTEXT", "SASL_SSL"):
            raise ValueError(f"KAFKA_SECURITY_PROTOCOL={protocol}: orderops speaks PLAINTEXT or SASL_SSL")
        password = env.get("KAFKA_SASL_PASSWORD")
        if env.get("KAFKA_SASL_PASSWORD_FILE"):
            password = Path(env["KAFKA_SASL_PASSWORD_FILE"]).read_text().strip()
        security = cls(protocol, env.get("KAFKA_SASL_MECHANISM", MECHANISM), env.get("KAFKA_SASL_USERNAME"),
                       password, Path(env["KAFKA_SSL_CA_FILE"]) if env.get("KAFKA_SSL_CA_FILE") else None)
        if security.secure and not (security.username and security.password):
            raise ValueError("KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD_FILE "
                             "(or KAFKA_SASL_PASSWORD)")
        return security

    @property
    def secure(self) -> bool:
        return self.protocol == "SASL_SSL"

    def confluent(self) -> dict[str, Any]:
        """librdkafka settings (confluent-kafka producers, consumers and admin clients)."""
        if not self.secure:
            return {}
        config = {"security.protocol": "SASL_SSL", "sasl.mechanisms": self.mechanism,
                  "sasl.username": self.username, "sasl.password": self.password}
        if self.ca_file:
            config["ssl.ca.location"] = str(self.ca_file)
        return config

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    def aiokafka(self) -> dict[str, Any]:
        """aiokafka client keyword arguments."""
        if not self.secure:
            return {}
        return {"security_protocol": "SASL_SSL", "sasl_mechanism": self.mechanism,
                "sasl_plain_username": self.username, "sasl_plain_password": self.password,
                "ssl_context": self.ssl_context()}

    def faust_credentials(self) -> Any:
        if not self.secure:
            return None
        import faust

        return faust.SASLCredentials(username=self.username, password=self.password, mechanism=self.mechanism,
                                     ssl_context=self.ssl_context())


def client_config(bootstrap: str, **settings: Any) -> dict[str, Any]:
    """A confluent-kafka client's configuration: the broker, the security settings of the
    environment, and ``settings`` (dots spelled as in librdkafka: pass a dict with ``**``)."""
    return {"bootstrap.servers": bootstrap, **KafkaSecurity.from_env().confluent(), **settings}


def secrets_dir(run_dir: Path) -> Path:
    return Path(os.environ.get("ORDEROPS_KAFKA_SECRETS_DIR", run_dir / "secrets" / "kafka"))


def principal_env(principal: str, secrets: Path) -> dict[str, str]:
    """The environment a client acting as ``principal`` needs (its password file, the CA)."""
    return {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": MECHANISM,
            "KAFKA_SASL_USERNAME": principal, "KAFKA_SASL_PASSWORD_FILE": str(secrets / f"{principal}.password"),
            "KAFKA_SSL_CA_FILE": str(secrets / "ca.pem")}


# -- principals and their ACLs, from the catalog ------------------------------------------------

@dataclass(frozen=True, order=True)
class Grant:
    resource: str  # "topic", "group"
    name: str
    pattern: str  # "literal" or "prefixed"
    operation: str  # READ, WRITE, DESCRIBE, CREATE, ALL...

    def __str__(self) -> str:
        return f"{self.operation:9} {self.resource:6} {self.name}{'*' if self.pattern == 'prefixed' else ''}"


def _reads(topic: catalog.Topic) -> set[Grant]:
    return {Grant("topic", topic.name, "literal", "READ"), Grant("topic", topic.name, "literal", "DESCRIBE")}


def _writes(topic: catalog.Topic) -> set[Grant]:
    return {Grant("topic", topic.name, "literal", "WRITE"), Grant("topic", topic.name, "literal", "DESCRIBE")}


# What a processor does with its own internal topics: create them (before Faust starts, and Faust
# declares them too), check their settings, read them (table recovery, standbys) and write them.
# Not delete, nor alter their settings, nor change their ACLs: ALL would give that too.
INTERNAL_TOPIC_OPERATIONS = ("CREATE", "DESCRIBE", "DESCRIBE_CONFIGS", "READ", "WRITE")


def grants(principal: str) -> list[Grant]:
    """Exactly what ``principal`` needs: its inputs, its outputs, its consumer group, and for a
    processor its timer, dead-letter and changelog topics (Faust's ``<app id>-…``)."""
    if principal == SIMULATOR:
        return sorted(set().union(*(set(grants(system)) for system in SIMULATED_SYSTEMS)))
    if principal == INGEST:
        return sorted(set().union(*(_writes(topic) for topic in catalog.INGESTED_TOPICS)))
    found: set[Grant] = set()
    for topic in catalog.ALL_TOPICS:
        if principal in topic.readers:
            found |= _reads(topic)
        if principal in topic.writers:
            found |= _writes(topic)
    if principal in catalog.PROCESSORS:
        # Its consumer group and its own internal topics (changelogs, Faust's leader topic) are
        # named after its app id, <processor> or <processor>-<instance>.
        found |= {Grant("group", principal, "prefixed", "READ"),
                  *(Grant("topic", catalog.changelog_prefix(principal), "prefixed", operation)
                    for operation in INTERNAL_TOPIC_OPERATIONS)}
    elif principal == catalog.ON_CALL:
        # `orderops replay` reads any processor's inputs, outputs and changelogs, with groups of its own.
        found |= {Grant("topic", "*", "literal", "READ"), Grant("topic", "*", "literal", "DESCRIBE"),
                  Grant("group", "orderops-", "prefixed", "READ")}
    elif any(principal in t.readers for t in catalog.ALL_TOPICS):
        found.add(Grant("group", principal, "prefixed", "READ"))
    return sorted(found)


def principals() -> tuple[str, ...]:
    systems = tuple(s for s in catalog.UPSTREAM_SYSTEMS if grants(s))
    return (*catalog.PROCESSORS, *systems, SIMULATOR, INGEST)


def password(directory: Path, principal: str) -> str:
    """The principal's password, made (256 random bits, file mode 0600) the first time."""
    path = directory / f"{principal}.password"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def setup(bootstrap: str, directory: Path) -> list[str]:
    """Create (or update) every principal's SCRAM credential and its ACLs on the broker, as the
    admin of the environment. Idempotent. Returns what was done, a line per principal."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    admin = AdminClient(client_config(bootstrap))
    upserts = [UserScramCredentialUpsertion(p, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                            password(directory, p).encode()) for p in principals()]
    for future in admin.alter_user_scram_credentials(upserts).values():
        future.result(30)
    bindings, report = [], []
    for p in principals():
        granted = grants(p)
        report.append(f"User:{p}: {len(granted)} ACLs")
        for g in granted:
            bindings.append(AclBinding(
                ResourceType.TOPIC if g.resource == "topic" else ResourceType.GROUP, g.name,
                ResourcePatternType.LITERAL if g.pattern == "literal" else ResourcePatternType.PREFIXED,
                f"User:{p}", "*", getattr(AclOperation, g.operation), AclPermissionType.ALLOW))
    for future in admin.create_acls(bindings).values():
        future.result(30)
    return report
