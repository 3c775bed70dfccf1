#!/usr/bin/env bash
# The full-length fault and isolation tests (the test suite runs them short):
# 20,000 events through each durable queue (JetStream, Redis streams,
# RabbitMQ, Kafka) with 3 broker restarts and 6 provider kills each, SIGTERM
# under load with 5,000 events, Kafka replicas joining and leaving under a
# flood of 20,000, and the isolation measurement over 50,000 events
# per side, which must keep 90 % of its throughput. Counts and ratios are
# printed. FAULT_EVENTS, FAULT_ROUNDS, ISOLATION_EVENTS and
# ISOLATION_MIN_RATIO override the sizes and the bound.
set -euo pipefail
cd "$(dirname "$0")/.."
export FAULT_EVENTS=${FAULT_EVENTS:-20000} FAULT_ROUNDS=${FAULT_ROUNDS:-3}
export ISOLATION_EVENTS=${ISOLATION_EVENTS:-50000} ISOLATION_MIN_RATIO=${ISOLATION_MIN_RATIO:-0.9}
bash scripts/test.sh -- faults:: --test-threads 1 --nocapture
bash scripts/test.sh -- isolation::a_good_app --nocapture
