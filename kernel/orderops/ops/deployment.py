"""Kubernetes manifests for the processors, generated from the catalog (processors, web ports).

    python -m orderops.ops.deployment > deploy/k8s/orderops.yaml

One StatefulSet per processor (stable pod names, a volume for its RocksDB state, readiness on
/healthz, scraped by Prometheus), a headless Service per processor (Faust routes a table read to the
worker that owns the order, at ``$(POD_NAME).<processor>``), a ConfigMap of the cluster settings and a
Job that creates the topics and publishes the return policies. tests/unit/test_deploy.py checks that
the committed file is this module's output.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from orderops.model.catalog import PROCESSORS, WEB_PORTS

IMAGE = "orderops:0.1.0"
STATE = "/var/lib/orderops"
SETTINGS = "orderops-settings"
# What a real cluster needs; edit before applying (docs/deploy.md explains each).
CLUSTER_SETTINGS = {
    "KAFKA_BOOTSTRAP": "kafka-0.kafka:9092,kafka-1.kafka:9092,kafka-2.kafka:9092",
    "ORDEROPS_PARTITIONS": "8",
    "ORDEROPS_REPLICATION_FACTOR": "3",
    "ORDEROPS_MIN_INSYNC_REPLICAS": "2",
    "ORDEROPS_STANDBY_REPLICAS": "1",
    "ORDEROPS_WEB_BIND": "0.0.0.0",
    "ORDEROPS_RUN_DIR": STATE,
    "ORDEROPS_DATA_DIR": f"{STATE}/state",
    "ORDEROPS_SESSION_TIMEOUT_SECONDS": "30",
    # Every client over TLS with its own SCRAM principal (docs/security.md): the ACLs are what
    # `orderops security acls` prints; each processor's password is in its Secret.
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SSL_CA_FILE": "/etc/orderops/kafka-ca/ca.pem",
    "ORDEROPS_SUPPORT_USERS_FILE": "/etc/orderops/support-users/support-users",
}
SECRET_MOUNTS = [("kafka-ca", "orderops-kafka-ca", "/etc/orderops/kafka-ca"),
                 ("support-users", "orderops-support-users", "/etc/orderops/support-users")]


def kafka_credentials(principal: str) -> list[dict[str, Any]]:
    return [{"name": "KAFKA_SASL_USERNAME", "value": principal},
            {"name": "KAFKA_SASL_PASSWORD",
             "valueFrom": {"secretKeyRef": {"name": f"orderops-kafka-{principal}", "key": "password"}}}]
NOTIFIER_SETTINGS = {
    "ORDEROPS_SMTP_HOST": "smtp.example.internal",
    "ORDEROPS_SMTP_PORT": "587",
    "ORDEROPS_SMTP_STARTTLS": "1",
    "ORDEROPS_WEBHOOK_URL": "https://messaging.example.internal/hooks/notifications",
}


def labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "orderops"}


def package(processor: str) -> str:
    return processor.replace("-", "_")


def processor_manifests(processor: str, image: str, replicas: int) -> list[dict[str, Any]]:
    port = WEB_PORTS[processor]
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "WEB_PORT", "value": str(port)},
        {"name": "ORDEROPS_WEB_HOST", "value": f"$(POD_NAME).{processor}"},
        *kafka_credentials(processor),
    ]
    if processor == "notifier":
        env.append({"name": "ORDEROPS_WEBHOOK_SECRET",
                    "valueFrom": {"secretKeyRef": {"name": "orderops-webhook", "key": "secret"}}})
    env_from = [{"configMapRef": {"name": SETTINGS}}]
    if processor == "notifier":
        env_from.append({"configMapRef": {"name": "orderops-notifier"}})
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": processor, "labels": labels(processor)},
        "spec": {"clusterIP": "None", "selector": labels(processor),
                 "ports": [{"name": "web", "port": port, "targetPort": port}]},
    }
    stateful_set = {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": processor, "labels": labels(processor)},
        "spec": {
            "serviceName": processor,
            # At most the partition count (ORDEROPS_PARTITIONS): more workers would sit idle.
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels(processor)},
            "template": {
                "metadata": {"labels": labels(processor),
                             "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                                             "prometheus.io/path": "/metrics"}},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                        "fsGroup": 10001},
                    # SIGTERM: the worker commits, flushes its changelogs and leaves the group.
                    "terminationGracePeriodSeconds": 60,
                    "containers": [{
                        "name": processor, "image": image,
                        "command": ["python", "-m", package(processor)],
                        "ports": [{"name": "web", "containerPort": port}],
                        "env": env, "envFrom": env_from,
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 5,
                                           "failureThreshold": 3},
                        "livenessProbe": {"tcpSocket": {"port": port}, "initialDelaySeconds": 60,
                                          "periodSeconds": 20},
                        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"},
                                      "limits": {"memory": "2Gi"}},
                        "volumeMounts": [{"name": "state", "mountPath": STATE},
                                         *({"name": n, "mountPath": path, "readOnly": True}
                                           for n, _, path in SECRET_MOUNTS)],
                    }],
                    "volumes": [{"name": n, "secret": {"secretName": secret}} for n, secret, _ in SECRET_MOUNTS],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "state"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
            }],
        },
    }
    return [service, stateful_set]


def manifests(image: str = IMAGE, replicas: int = 2) -> list[dict[str, Any]]:
    settings = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": SETTINGS, "labels": labels("orderops")},
                "data": dict(CLUSTER_SETTINGS)}
    notifier = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "orderops-notifier", "labels": labels("notifier")}, "data": dict(NOTIFIER_SETTINGS)}
    setup = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "orderops-setup", "labels": labels("orderops-setup")},
        "spec": {"backoffLimit": 10, "template": {"metadata": {"labels": labels("orderops-setup")}, "spec": {
            "restartPolicy": "OnFailure",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
            "containers": [{"name": "setup", "image": image, "envFrom": [{"configMapRef": {"name": SETTINGS}}],
                            "env": kafka_credentials("admin"),
                            "volumeMounts": [{"name": "kafka-ca", "mountPath": SECRET_MOUNTS[0][2], "readOnly": True}],
                            "command": ["sh", "-c", "orderops topics create && orderops policies publish"]}],
            "volumes": [{"name": "kafka-ca", "secret": {"secretName": SECRET_MOUNTS[0][1]}}]}}},
    }
    out = [settings, notifier, setup]
    for processor in PROCESSORS:
        out += processor_manifests(processor, image, replicas)
    return out


def render(image: str = IMAGE, replicas: int = 2) -> str:
    header = ("# Generated by `python -m orderops.ops.deployment` from the topic catalog; do not edit by hand.\n"
              "# Before applying: set KAFKA_BOOTSTRAP and the notifier's SMTP/webhook settings; create the secrets\n"
              "# orderops-webhook (key: secret), orderops-kafka-ca (ca.pem), orderops-support-users (support-users,\n"
              "# written by `orderops users add`) and orderops-kafka-<principal> (key: password) for admin and each\n"
              "# processor, whose principals carry the ACLs `orderops security acls` prints; push the image\n"
              "# (docs/deploy.md, docs/security.md).\n")
    return header + "---\n".join(yaml.safe_dump(m, sort_keys=False) for m in manifests(image, replicas))


if __name__ == "__main__":
    sys.stdout.write(render())
