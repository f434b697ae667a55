#!/usr/bin/env bash
# A real Schema Registry for the Confluent framing (magic byte 0, 4-byte schema id): Apicurio
# Registry, its ready-to-run Quarkus distribution from Maven Central (classifier `all`), serving the
# Confluent-compatible API at /apis/ccompat/v7. No build step; Java 17 runs 3.0.x.
#   registry.sh up       fetch (once, into ~/.m2) and unpack, start, wait until it answers
#   registry.sh down     SIGTERM, wait for a clean exit
#   registry.sh status   running or not, and where
#   registry.sh url      the Confluent-compatible API's base URL (ORDEROPS_SCHEMA_REGISTRY_URL)
# Environment (defaults): ORDEROPS_REGISTRY_PORT=6108, ORDEROPS_RUN_DIR=<repo>/.run,
#   APICURIO_VERSION=3.0.9, REGISTRY_HEAP_OPTS="-Xms64m -Xmx512m", REGISTRY_START_TIMEOUT=120 (seconds).
# Schemas are kept in an H2 database file under <run dir>/registry/data: ids survive a restart,
# so records already on the topics keep resolving.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
port=${ORDEROPS_REGISTRY_PORT:-6108}
run_root=${ORDEROPS_RUN_DIR:-$repo/.run}
version=${APICURIO_VERSION:-3.0.9}
heap=${REGISTRY_HEAP_OPTS:--Xms64m -Xmx512m}
start_timeout=${REGISTRY_START_TIMEOUT:-120}
run_dir=$run_root/registry
dist=$run_dir/dist-$version
pid_file=$run_dir/registry.pid
log_file=$run_dir/registry.log
artifact=io.apicurio:apicurio-registry-app:$version:tar.gz:all
tarball=${MAVEN_REPOSITORY:-$HOME/.m2/repository}/io/apicurio/apicurio-registry-app/$version/apicurio-registry-app-$version-all.tar.gz
api=http://127.0.0.1:$port/apis/ccompat/v7

die() { echo "registry: $*" >&2; exit 1; }

running_pid() {
  [ -s "$pid_file" ] || return 1
  local pid; pid=$(cat "$pid_file")
  kill -0 "$pid" 2>/dev/null || return 1
  [[ "$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" == *apicurio-registry-app* ]] || return 1
  echo "$pid"
}

answers() { curl -sf -o /dev/null --max-time 2 "$api/subjects"; }

fetch() {
  command -v java >/dev/null 2>&1 || die "java not found: Apicurio Registry $version needs Java 17 or newer."
  command -v curl >/dev/null 2>&1 || die "curl not found: it is how this script sees the registry answer."
  if [ ! -s "$tarball" ]; then
    command -v mvn >/dev/null 2>&1 || die "mvn not found. Install Maven; it fetches the registry from Maven Central."
    echo "registry: fetching Apicurio Registry $version from Maven Central (~110 MB into ~/.m2, once)"
    # Maven 3.8 writes colour resets even in batch mode with -q: they are taken out of its output.
    mvn -B -q -Dstyle.color=never dependency:get -Dartifact="$artifact" -Dtransitive=false 2>&1 \
      | sed 's/\x1b\[[0-9;]*m//g' || die "Maven could not fetch $artifact (see above): is Maven Central reachable?"
  fi
  if [ ! -s "$dist/apicurio-registry-app-$version-runner.jar" ]; then
    rm -rf "$dist.partial" && mkdir -p "$dist.partial"
    tar -xzf "$tarball" -C "$dist.partial" && mv "$dist.partial" "$dist"
  fi
}

up() {
  if pid=$(running_pid); then
    answers && { echo "registry: running (pid $pid) at $api"; return 0; }
  fi
  if answers; then
    die "port $port answers as a registry but it is not this checkout's (no live pid in $pid_file): stop it, or choose ORDEROPS_REGISTRY_PORT."
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port on 127.0.0.1 is taken by another process: stop it, or choose ORDEROPS_REGISTRY_PORT."
  fi
  fetch
  mkdir -p "$run_dir/data"
  # shellcheck disable=SC2086
  nohup java $heap -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" -Dquarkus.management.enabled=false \
    -Dapicurio.datasource.url="jdbc:h2:file:$run_dir/data/registry" \
    -jar "$dist/apicurio-registry-app-$version-runner.jar" >> "$log_file" 2>&1 < /dev/null &
  echo $! > "$pid_file"
  local waited=0
  until answers; do
    kill -0 "$(cat "$pid_file")" 2>/dev/null || die "it exited during start-up; see $log_file"
    [ "$waited" -lt "$((start_timeout * 2))" ] || die "no answer at $api within ${start_timeout}s; see $log_file"
    sleep 0.5; waited=$((waited + 1))
  done
  echo "registry: up (pid $(cat "$pid_file")) at $api; log $log_file"
}

down() {
  local pid
  pid=$(running_pid) || { echo "registry: not running"; return 0; }
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || { echo "registry: stopped"; rm -f "$pid_file"; return 0; }; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pid_file"
  echo "registry: killed after 30 s of SIGTERM"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if pid=$(running_pid); then echo "registry: running (pid $pid) at $api"; else echo "registry: not running"; fi ;;
  url) echo "$api" ;;
  *) die "usage: registry.sh up|down|status|url" ;;
esac
