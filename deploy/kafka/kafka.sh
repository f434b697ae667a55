#!/usr/bin/env bash
# The embedded Kafka 4.4 broker (KRaft, broker+controller in one JVM) from Maven Central jars.
#   kafka.sh up       resolve the classpath, format storage once, start, wait until it answers
#   kafka.sh down     SIGTERM, wait for a clean exit
#   kafka.sh status   running or not, and where
#   kafka.sh bootstrap  the addresses clients start from (every node of a cluster)
# Environment (defaults): KAFKA_PORT=9092, KAFKA_CONTROLLER_PORT=9093,
#   KAFKA_BROKERS=1; 3: a cluster of three nodes (each broker+controller; node n listens on KAFKA_PORT
#     and KAFKA_CONTROLLER_PORT plus 10×(n−1), data in <run dir>/kafka-cluster/node-n; internal topics
#     with three replicas, two in sync); KAFKA_NODE=n acts on that node only (restarting one).
#   ORDEROPS_RUN_DIR=<repo>/.run, ORDEROPS_PYTHON=<repo>/.venv/bin/python,
#   KAFKA_HEAP_OPTS="-Xms256m -Xmx1g", KAFKA_START_TIMEOUT=120 (seconds).
#   KAFKA_CLASSPATH_FILE=<run dir>/kafka/classpath.txt (the resolved jars; shared by brokers of one checkout).
#   SECURE=1: TLS + SASL/SCRAM-SHA-512 + ACLs (server-secure.properties.in), data in <run dir>/kafka-secure;
#     a local CA, the broker's certificate and the admin password are made at the first start in
#     ORDEROPS_KAFKA_SECRETS_DIR=<run dir>/secrets/kafka (orderops security setup adds the other principals).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
base_port=${KAFKA_PORT:-9092}
base_controller_port=${KAFKA_CONTROLLER_PORT:-9093}
run_root=${ORDEROPS_RUN_DIR:-$repo/.run}
secure=${SECURE:-}
[ "$secure" = 0 ] && secure=
brokers=${KAFKA_BROKERS:-1}
secrets_dir=${ORDEROPS_KAFKA_SECRETS_DIR:-$run_root/secrets/kafka}
python=${ORDEROPS_PYTHON:-$repo/.venv/bin/python}
heap=${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}
start_timeout=${KAFKA_START_TIMEOUT:-120}
classpath_file=${KAFKA_CLASSPATH_FILE:-$run_root/kafka/classpath.txt}

die() { echo "kafka: $*" >&2; exit 1; }

case "$brokers" in
  1) ;;
  3) [ -z "$secure" ] || die "KAFKA_BROKERS=3 with SECURE=1 is not supported: the secure broker runs alone." ;;
  *) die "KAFKA_BROKERS=$brokers: 1 (one broker) or 3 (a cluster of three) are supported." ;;
esac

node_port() { echo $((base_port + 10 * ($1 - 1))); }
node_controller_port() { echo $((base_controller_port + 10 * ($1 - 1))); }

use_node() {
  # The variables of node $1: its ports and folders (one broker: node 1, where it always was).
  node=$1
  port=$(node_port "$node")
  controller_port=$(node_controller_port "$node")
  if [ "$brokers" = 1 ]; then
    run_dir=$run_root/kafka${secure:+-secure}
  else
    run_dir=$run_root/kafka-cluster/node-$node
  fi
  pid_file=$run_dir/kafka.pid
  log_dir=$run_dir/logs
}

bootstrap_servers() {
  local n list=""
  for n in $(seq 1 "$brokers"); do list="$list${list:+,}127.0.0.1:$(node_port "$n")"; done
  echo "$list"
}

use_node 1

require_tools() {
  command -v java >/dev/null 2>&1 || die "java not found. Install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless) and retry."
  command -v mvn >/dev/null 2>&1 || die "mvn not found. Install Maven (Debian: apt-get install maven) and retry; it fetches the broker jars from Maven Central."
  local major
  major=$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')
  [ "${major%%.*}" -ge 17 ] 2>/dev/null || die "Java $major found; Kafka 4.4 needs Java 17 or newer."
}

running_pid() {
  [ -f "$pid_file" ] || return 1
  local pid; pid=$(cat "$pid_file")
  kill -0 "$pid" 2>/dev/null || return 1
  # Not `ps | grep -q`: pipefail + an early grep exit fails with SIGPIPE, and ps cuts long lines.
  local args; args=$(tr "\0" " " < "/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ "$args" == *kafka.Kafka* ]] || return 1
  echo "$pid"
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

resolve_classpath() {
  if [ ! -s "$classpath_file" ] || [ "$here/pom.xml" -nt "$classpath_file" ]; then
    echo "kafka: resolving the broker classpath from Maven Central (first run downloads ~60 MB into ~/.m2)"
    # Maven 3.8 writes colour resets even in batch mode with -q: they are taken out of its output.
    mvn -B -q -Dstyle.color=never -f "$here/pom.xml" dependency:build-classpath -Dmdep.outputFile="$classpath_file" \
      2>&1 | sed 's/\x1b\[[0-9;]*m//g' \
      || die "Maven could not resolve org.apache.kafka:kafka_2.13 (see the output above): check that Maven Central is reachable."
  fi
}

make_secrets() {
  # A local CA and the broker's certificate (for 127.0.0.1, localhost and kafka), made once.
  command -v openssl >/dev/null 2>&1 || die "openssl not found: secure mode makes its certificates with it (Debian: apt-get install openssl)."
  mkdir -p "$secrets_dir"; chmod 700 "$secrets_dir"
  (
    cd "$secrets_dir"; umask 077
    [ -s admin.password ] || openssl rand -base64 32 | tr -d '/+=\n' > admin.password
    if [ ! -s ca.pem ]; then
      openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=orderops local CA" \
        -keyout ca.key -out ca.pem -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
      rm -f broker-keystore.pem
    fi
    if [ ! -s broker-keystore.pem ]; then
      openssl req -newkey rsa:2048 -nodes -subj "/CN=orderops-broker" -keyout broker.key -out broker.csr 2>/dev/null
      printf "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kafka\nextendedKeyUsage=serverAuth,clientAuth\n" > broker.ext
      openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 -extfile broker.ext \
        -out broker.pem 2>/dev/null
      openssl pkcs8 -topk8 -nocrypt -in broker.key -out broker.pk8
      cat broker.pk8 broker.pem ca.pem > broker-keystore.pem
      rm -f broker.csr broker.ext broker.key broker.pk8
    fi
  ) || die "making the certificates in $secrets_dir failed (output above)."
  chmod 644 "$secrets_dir/ca.pem"
}

render_config() {
  local template=("$here/server.properties.in") quorum replicas=1 in_sync=1 n
  [ -n "$secure" ] && template+=("$here/server-secure.properties.in")
  if [ "$brokers" = 1 ]; then
    quorum="controller.quorum.bootstrap.servers=127.0.0.1:$controller_port"
  else
    local voters=""
    for n in $(seq 1 "$brokers"); do voters="$voters${voters:+,}$n@127.0.0.1:$(node_controller_port "$n")"; done
    quorum="controller.quorum.voters=$voters"
    replicas=3; in_sync=2
  fi
  cat "${template[@]}" | sed -e "s#@RUN_DIR@#$run_dir#g" -e "s#@PORT@#$port#g" -e "s#@CONTROLLER_PORT@#$controller_port#g" \
    -e "s#@NODE_ID@#$node#g" -e "s#@QUORUM@#$quorum#g" -e "s#@REPLICAS@#$replicas#g" -e "s#@IN_SYNC@#$in_sync#g" \
    -e "s#@SECRETS@#$secrets_dir#g" -e "s#@ADMIN_PASSWORD@#${secure:+$(cat "$secrets_dir/admin.password" 2>/dev/null)}#g" \
    > "$run_dir/server.properties"
  chmod 600 "$run_dir/server.properties"  # in secure mode it holds the admin password
}

client_env() {
  # What the broker checks are made with: in secure mode, the admin's credentials.
  if [ -n "$secure" ]; then
    export KAFKA_SECURITY_PROTOCOL=SASL_SSL KAFKA_SASL_MECHANISM=SCRAM-SHA-512 KAFKA_SASL_USERNAME=admin \
      KAFKA_SASL_PASSWORD_FILE="$secrets_dir/admin.password" KAFKA_SSL_CA_FILE="$secrets_dir/ca.pem"
  fi
}

format_storage() {
  [ -f "$run_dir/data/meta.properties" ] && return 0
  local cp; cp=$(cat "$classpath_file")
  # One id for the cluster's nodes; one broker keeps it beside its data, as it always did.
  local id_file=$run_dir/cluster.id quorum_mode=--standalone
  if [ "$brokers" != 1 ]; then id_file=$run_root/kafka-cluster/cluster.id; quorum_mode=; fi
  [ -s "$id_file" ] || java -cp "$cp" kafka.tools.StorageTool random-uuid > "$id_file"
  java -Dlog4j2.configurationFile="$here/log4j2.yaml" -Dkafka.logs.dir="$log_dir" -cp "$cp" \
    kafka.tools.StorageTool format $quorum_mode -t "$(cat "$id_file")" \
    -c "$run_dir/server.properties" --ignore-formatted \
    ${secure:+--add-scram "SCRAM-SHA-512=[name=admin,password=$(cat "$secrets_dir/admin.password")]"} >/dev/null \
    || die "formatting storage in $run_dir/data failed; delete that folder and retry."
}

wait_until_answering() {
  local pid=$1
  if [ -x "$python" ]; then
    client_env
    if ! "$python" -m orderops.ops.cli broker wait --bootstrap "127.0.0.1:$port" --timeout "$start_timeout" --pid "$pid"; then
      echo "kafka: the broker did not come up; last lines of $log_dir/server.log:" >&2
      tail -n 30 "$log_dir/server.log" >&2 || true
      tail -n 20 "$log_dir/stdout.log" >&2 || true
      exit 1
    fi
  else
    # Before the Python environment exists: wait for the listener, then for the start-up line.
    local waited=0
    until grep -q "Kafka Server started" "$log_dir/server.log" 2>/dev/null; do
      kill -0 "$pid" 2>/dev/null || { tail -n 30 "$log_dir/server.log" "$log_dir/stdout.log" >&2 || true; die "the broker exited during start-up (log above)."; }
      sleep 1; waited=$((waited + 1))
      [ "$waited" -lt "$start_timeout" ] || die "the broker did not start within ${start_timeout}s; see $log_dir/server.log"
    done
  fi
}

start_node() {
  # Start node $1 (use_node) unless it runs; its pid, or nothing if it ran already.
  use_node "$1"
  mkdir -p "$run_dir" "$log_dir" "$(dirname "$classpath_file")"
  if pid=$(running_pid); then
    echo "kafka: already running (pid $pid) at 127.0.0.1:$port" >&2
    return 0
  fi
  for p in "$port" "$controller_port"; do
    port_taken "$p" && die "port $p on 127.0.0.1 is taken by another process (not this project's broker: no live pid in $pid_file). Stop it, or set KAFKA_BOOTSTRAP to use that broker, or choose KAFKA_PORT/KAFKA_CONTROLLER_PORT."
  done
  [ -n "$secure" ] && make_secrets
  render_config
  format_storage
  local cp; cp=$(cat "$classpath_file")
  # setsid: the broker must outlive the make/pytest process that started it.
  setsid nohup java $heap -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$here/log4j2.yaml" -Dkafka.logs.dir="$log_dir" \
    -cp "$cp" kafka.Kafka "$run_dir/server.properties" > "$log_dir/stdout.log" 2>&1 < /dev/null &
  echo "$!" > "$pid_file"
  echo "$!"
}

nodes() {
  # The nodes a command acts on: KAFKA_NODE, or all of them.
  if [ -n "${KAFKA_NODE:-}" ]; then echo "$KAFKA_NODE"; else seq 1 "$brokers"; fi
}

up() {
  require_tools
  mkdir -p "$(dirname "$classpath_file")"
  resolve_classpath
  local n pid started=()
  # A cluster's controllers elect a leader only once a majority runs: start them all, then wait.
  for n in $(nodes); do
    pid=$(start_node "$n") || exit 1
    started+=("$n:$pid")
  done
  local entry
  for entry in "${started[@]}"; do
    use_node "${entry%%:*}"; pid=${entry#*:}
    [ -n "$pid" ] || continue
    wait_until_answering "$pid"
    echo "kafka: up (pid $pid) at 127.0.0.1:$port${secure:+ (secure: SASL_SSL, ACLs; secrets in $secrets_dir)}; logs in $log_dir"
  done
  [ "$brokers" = 1 ] || echo "kafka: cluster of $brokers at $(bootstrap_servers) (KAFKA_BOOTSTRAP)"
}

down() {
  if [ "$brokers" = 1 ]; then
    down_node
    # `make stop` without KAFKA_BROKERS=3 after `KAFKA_BROKERS=3 make run` stops the cluster too.
    if compgen -G "$run_root/kafka-cluster/node-*/kafka.pid" >/dev/null; then brokers=3; down_cluster; fi
  else
    down_cluster
  fi
}

down_cluster() {
  # All nodes at once: stopped one by one, the last ones wait for a quorum that is leaving.
  local n pid pids=()
  for n in $(nodes); do
    use_node "$n"
    if pid=$(running_pid); then kill -TERM "$pid"; pids+=("$n:$pid"); else rm -f "$pid_file"; fi
  done
  local entry
  for entry in "${pids[@]}"; do
    use_node "${entry%%:*}"; pid=${entry#*:}
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && { echo "kafka: node $node (pid $pid) ignored SIGTERM for 60s; sending SIGKILL" >&2; kill -KILL "$pid" 2>/dev/null || true; }
    rm -f "$pid_file"; echo "kafka: stopped node $node (pid $pid)"
  done
  [ "${#pids[@]}" -gt 0 ] || echo "kafka: not running"
}

down_node() {
  local pid
  if ! pid=$(running_pid); then
    # Stopping also finds the broker of the other mode (make stop after SECURE=1 make run).
    local other=$run_root/kafka; [ -z "$secure" ] && other=$run_root/kafka-secure
    if [ -f "$other/kafka.pid" ]; then pid_file=$other/kafka.pid; run_dir=$other; secure=${secure:-1}
      pid=$(running_pid) || { echo "kafka: not running"; rm -f "$pid_file"; return 0; }
    else
      echo "kafka: not running"; rm -f "$pid_file"; return 0
    fi
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pid_file"; echo "kafka: stopped (pid $pid)"; return 0; }
    sleep 1
  done
  echo "kafka: pid $pid ignored SIGTERM for 60s; sending SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pid_file"
}

status() {
  local n down=0
  for n in $(nodes); do
    use_node "$n"
    if pid=$(running_pid); then
      echo "kafka: running (pid $pid) at 127.0.0.1:$port; data $run_dir/data; logs $log_dir"
    else
      echo "kafka: not running${KAFKA_NODE:+ (node $n)}$([ "$brokers" = 1 ] || echo " (node $n)")"; down=1
    fi
  done
  [ "$down" = 0 ] || return 3
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  bootstrap) bootstrap_servers ;;
  *) echo "usage: $0 up|down|status|bootstrap" >&2; exit 2 ;;
esac
