#!/usr/bin/env bash
# Runs every test: unit tests and the end-to-end suite in tests/ (which runs
# the sample apps and the probe fixture as real wasm components). Arguments
# are passed to `cargo test --workspace` instead, e.g.
# `scripts/test.sh -- dispatch::` runs the dispatch tests only.
set -euo pipefail
cd "$(dirname "$0")/.."

# Brokers the tests talk to: each is checked, and started when it is down.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ensure() {
  local name=$1 port=$2; shift 2
  listening "$port" && return 0
  echo "$name is not listening on 127.0.0.1:$port; starting it"
  "$@"
  for _ in $(seq 150); do listening "$port" && return 0; sleep 0.2; done
  echo "$name did not start on port $port" >&2
  exit 1
}
ensure NATS 4222 start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
  -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
ensure Redis 6379 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
  --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
ensure RabbitMQ 5672 rabbitmq-server -detached
ensure Mosquitto 1883 mosquitto -d -c /etc/mosquitto/mosquitto.conf
# Kafka: tansu, a Kafka-protocol broker from the crate registry (no Apache
# Kafka build can be fetched here), in memory; installed once (~10 min).
command -v tansu >/dev/null || cargo install tansu --locked --features dynostore,libsql
ensure Kafka 9092 start-stop-daemon --start --background --exec "$(command -v tansu)" -- \
  broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
  --storage-engine memory://tansu/

# Prometheus, which the metrics test runs to scrape the provider (Debian's package).
command -v prometheus >/dev/null || {
  apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 ||
    { apt-get update >/dev/null && apt-get install -y --no-install-recommends prometheus >/dev/null; }
  # The package starts a system-wide server; the tests run their own.
  (service prometheus stop || systemctl stop prometheus) >/dev/null 2>&1 || true
}

rustup target add wasm32-wasip2
# Clients that are not ours, for the interoperation and hostile-input tests.
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore nats-py pika redis paho-mqtt cloudevents requests confluent-kafka kafka-python
(cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
# The Python and JavaScript guests' toolchains (the tests build those samples).
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore componentize-py==0.25.1
(cd sample-apps/counter-js && npm ci --no-audit --no-fund --loglevel=error)
(cd sample-apps/relay-js && npm ci --no-audit --no-fund --loglevel=error)
# The tests build the guests themselves too; doing it here shows the output.
(cd sample-apps && cargo build --target wasm32-wasip2 --release)
(cd tests/fixtures && cargo build --target wasm32-wasip2 --release)
cargo fmt --all -- --check

# The tests' output goes to a file as well: when a run fails, the start of
# each panic message (which test, where, why) is repeated at the very end,
# where a log cut to its tail still shows it (a backtrace or a long message
# would push it out).
log=$(mktemp -t messaging-tests.XXXXXX)
why_they_failed() {
  echo "== why: the start of each panic message above =="
  awk '/^thread .* panicked at / { print; left = 6; next }
       /^(stack backtrace:|note: )/ { left = 0 }
       left > 0 && NF > 0 { print "    " substr($0, 1, 240); left-- }' "$log" | head -n 40
}
trap 'status=$?; [ "$status" -eq 0 ] || why_they_failed; rm -f "$log"' EXIT
tests() { cargo test --workspace "$@" 2>&1 | tee -a "$log"; }

if [ $# -gt 0 ]; then
  tests "$@"
  exit
fi
# Everything, then the throughput measurement of isolation::, which gets the
# machine to itself (tests running beside it would skew its ratio). The
# fault and isolation tests run in short versions here; scripts/faults.sh
# runs them at full length.
tests -- --skip isolation::a_good_app --skip faults::kafka_sigterm \
  --skip faults::kafka_survives_broker_restarts
tests --test all -- isolation::a_good_app --nocapture
# Alone too, one after the other: tansu on SQLite stops answering a group's
# heartbeats when the other fault tests run beside these (see their doc
# comments).
tests --test all -- faults::kafka_sigterm \
  faults::kafka_survives_broker_restarts --nocapture --test-threads 1
# The benchmark suite's quick form (small N, one run, every section, every
# link), so that it does not rot; `cargo bench --bench suite` is the full one.
tests --bench suite
