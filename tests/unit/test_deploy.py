"""docker-compose.yml, the Dockerfile and deploy/k8s agree with the catalog, the processors'
settings and deploy/prometheus. These machines have no Docker engine and no Kubernetes: these
checks are what keeps the files from drifting from the code."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import pytest
import yaml

from orderops.model.catalog import PROCESSORS, WEB_PORTS
from orderops.ops import deployment
from orderops.ops.monitoring import compose_addresses
from orderops.ops.paths import source_root
from orderops.ops.processors import SIMULATE_ARGS

ROOT = source_root() or Path.cwd()
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
DEPLOY_DOC = (ROOT / "docs" / "deploy.md").read_text()


def documented(variable: str) -> bool:
    return f"`{variable}`" in CONFIGURATION or f"`{variable}`" in DEPLOY_DOC


def state_dir(env: dict) -> str:
    return env["ORDEROPS_RUN_DIR"]


@pytest.mark.parametrize("processor", PROCESSORS)
def test_every_processor_runs_in_compose_as_the_catalog_says(processor):
    service = SERVICES[processor]
    port = WEB_PORTS[processor]
    assert service["command"] == ["python", "-m", processor.replace("-", "_")]
    env = service["environment"]
    assert env["WEB_PORT"] == str(port) and f"{port}:{port}" in service["ports"]
    assert env["ORDEROPS_WEB_HOST"] == processor  # where other workers and Prometheus reach it
    assert env["ORDEROPS_WEB_BIND"] == "0.0.0.0"
    assert env["ORDEROPS_DATA_DIR"].startswith(state_dir(env))
    volume, *_ = service["volumes"]
    name, mount = volume.split(":")
    assert mount == state_dir(env) and name in COMPOSE["volumes"], "state must outlive the container"
    assert service["depends_on"]["policies"]["condition"] == "service_completed_successfully"
    host, kafka_port = env["KAFKA_BOOTSTRAP"].split(":")
    assert f"INTERNAL://{host}:{kafka_port}" in SERVICES[host]["environment"]["KAFKA_ADVERTISED_LISTENERS"]


def test_every_setting_compose_gives_the_image_is_documented():
    for name, service in SERVICES.items():
        if service.get("image", "").startswith("orderops"):
            for variable in service.get("environment", {}):
                assert documented(variable), f"{name}: {variable} is not in a configuration table"


def test_set_up_jobs_and_simulator_match_make_run():
    assert SERVICES["topics"]["command"] == ["orderops", "topics", "create"]
    assert SERVICES["policies"]["command"] == ["orderops", "policies", "publish"]
    assert SERVICES["policies"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert SERVICES["simulator"]["command"] == ["orderops", "simulate", *SIMULATE_ARGS.split()]
    for job in ("topics", "policies", "simulator"):
        assert SERVICES[job].get("restart", "no") == "no"


def test_every_processor_reads_the_support_users_the_users_job_writes():
    users = SERVICES["users"]
    assert users["command"] == ["orderops", "users", "dev"] and users.get("restart") == "no"
    [written] = users["volumes"]
    volume, path = written.split(":")[:2]
    assert path == users["environment"]["ORDEROPS_RUN_DIR"] + "/secrets"
    for processor in PROCESSORS:
        assert f"{volume}:{path}:ro" in SERVICES[processor]["volumes"], processor
        assert SERVICES[processor]["environment"]["ORDEROPS_RUN_DIR"] == users["environment"]["ORDEROPS_RUN_DIR"]


def test_the_way_in_runs_as_make_run_runs_it():
    """The HTTP ingest reads the principals its job writes, and every processor resolves the
    Confluent framing against the registry service."""
    ingest, job = SERVICES["ingest"], SERVICES["ingest-principals"]
    assert ingest["command"] == ["orderops", "ingest"] and job["command"] == ["orderops", "ingest", "principals", "dev"]
    assert "secrets:/var/lib/orderops/secrets:ro" in ingest["volumes"] and "secrets:/var/lib/orderops/secrets" in job["volumes"]
    assert ingest["environment"]["ORDEROPS_INGEST_BIND"] == "0.0.0.0" and "6107:6107" in ingest["ports"]
    assert ingest["depends_on"]["ingest-principals"]["condition"] == "service_completed_successfully"
    registry_port = SERVICES["registry"]["ports"][0].split(":")[1]
    for processor in PROCESSORS:
        url = SERVICES[processor]["environment"]["ORDEROPS_SCHEMA_REGISTRY_URL"]
        assert url == f"http://registry:{registry_port}/apis/ccompat/v7", (processor, url)


def test_the_notifier_reaches_the_sinks():
    notifier, sinks = SERVICES["notifier"]["environment"], SERVICES["notifier-sinks"]["environment"]
    assert notifier["ORDEROPS_SMTP_HOST"] == "notifier-sinks"
    assert notifier["ORDEROPS_SMTP_PORT"] == sinks["ORDEROPS_SMTP_PORT"]
    assert notifier["ORDEROPS_WEBHOOK_URL"] == f"http://notifier-sinks:{sinks['ORDEROPS_SINK_PORT']}/hooks/notifications"
    assert notifier["ORDEROPS_WEBHOOK_SECRET_FILE"].startswith(state_dir(notifier))


def test_the_broker_is_the_version_make_run_runs():
    version = re.search(r"<kafka.version>(.+)</kafka.version>", (ROOT / "deploy/kafka/pom.xml").read_text()).group(1)
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{version}"
    assert SERVICES["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # the catalog creates them


def test_prometheus_and_grafana_get_the_projects_files():
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in SERVICES["prometheus"]["volumes"])
    assert mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    rules_dir = mounts["./deploy/prometheus/rules"]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert rule_file.startswith(rules_dir + "/")
        assert (ROOT / "deploy/prometheus/rules" / rule_file[len(rules_dir) + 1:]).is_file()
    targets = [t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]]
    assert targets == [compose_addresses(p) for p in PROCESSORS]
    for target in targets:
        host, port = target.split(":")
        assert SERVICES[host]["environment"]["WEB_PORT"] == port

    grafana = dict(v.rsplit(":", 1)[0].split(":", 1) for v in SERVICES["grafana"]["volumes"])
    assert grafana["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/orderops.yml").read_text())
    assert grafana["./deploy/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090" and "9090:9090" in SERVICES["prometheus"]["ports"]


def test_the_dockerfile_builds_a_slim_non_root_image_from_the_lock_file():
    stages = re.split(r"(?m)^FROM ", DOCKERFILE)[1:]
    assert len(stages) == 2, "a build stage and a final stage"
    build, final = stages
    assert "-c requirements.lock" in build
    for project in [*(p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml")), "kernel", "tools"]:
        assert re.search(rf"\./(services/)?{project}\b", build), f"{project} is not installed in the image"
    assert final.startswith("python:3.11-slim") and "COPY --from=build /opt/orderops /opt/orderops" in final
    assert not re.search(r"apt-get install|gcc|build-essential", final), "no build tools in the final stage"
    user = re.search(r"(?m)^USER (\S+)", final).group(1)
    assert user not in ("root", "0")
    assert "COPY schemas/ /srv/orderops/schemas/" in final and "ORDEROPS_SCHEMAS_DIR=/srv/orderops/schemas" in final
    assert "COPY policies/ /srv/orderops/policies/" in final and "WORKDIR /srv/orderops" in final
    assert re.search(r"HEALTHCHECK .*\n.*/healthz", final)
    for variable in re.findall(r"(ORDEROPS_[A-Z_]+)=", final):
        assert documented(variable), variable


def test_kubernetes_manifests_are_the_generated_ones():
    committed = (ROOT / "deploy" / "k8s" / "orderops.yaml").read_text()
    assert committed == deployment.render(), "deploy/k8s/orderops.yaml drifted: python -m orderops.ops.deployment > it"


@pytest.mark.parametrize("processor", PROCESSORS)
def test_each_processor_is_a_stateful_set_with_state_readiness_and_scraping(processor):
    docs = {(m["kind"], m["metadata"]["name"]): m for m in deployment.manifests()}
    stateful, service = docs[("StatefulSet", processor)], docs[("Service", processor)]
    port = WEB_PORTS[processor]
    pod = stateful["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["command"] == ["python", "-m", processor.replace("-", "_")]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["WEB_PORT"] == str(port) and env["ORDEROPS_WEB_HOST"] == f"$(POD_NAME).{processor}"
    assert stateful["spec"]["serviceName"] == processor and service["spec"]["clusterIP"] == "None"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    mount, *secrets = container["volumeMounts"]
    assert mount["mountPath"] == deployment.CLUSTER_SETTINGS["ORDEROPS_RUN_DIR"]
    # Kafka credentials of its own principal; the CA and the support users from secrets, read-only.
    assert env["KAFKA_SASL_USERNAME"] == processor and deployment.CLUSTER_SETTINGS["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert all(m["readOnly"] for m in secrets)
    assert {m["mountPath"] for m in secrets} >= {str(PurePosixPath(deployment.CLUSTER_SETTINGS[v]).parent)
                                                 for v in ("KAFKA_SSL_CA_FILE", "ORDEROPS_SUPPORT_USERS_FILE")}
    assert stateful["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == mount["name"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert stateful["spec"]["replicas"] <= int(deployment.CLUSTER_SETTINGS["ORDEROPS_PARTITIONS"])
    for variable in [*deployment.CLUSTER_SETTINGS, *deployment.NOTIFIER_SETTINGS, *env]:
        assert variable == "POD_NAME" or documented(variable), variable
