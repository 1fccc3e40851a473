#!/usr/bin/env bash
# Soak test: mixed traffic through every role of two release-built sidegate processes, with
# SIGHUP reloads of changed configurations, for DURATION (seconds, or 30m, 4h). Fails when a
# transfer is cut or damaged, a process exits, or RSS keeps growing after warm-up; prints
# per-path transfer counts and the RSS slope of each process. Not part of tests/run.sh.
#
#   tests/soak.sh DURATION            # e.g. tests/soak.sh 2h
#   SOAK_RELOAD_SECONDS=5 tests/soak.sh 10m   # reload period (default 3; 0 = no reloads)
#
# The test itself is `soak::soak` in the operations test binary (tests/operations/soak.rs),
# ignored in `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:?usage: tests/soak.sh DURATION (seconds, or e.g. 30m, 4h)}"
case "$duration" in
    *h) seconds=$((${duration%h} * 3600)) ;;
    *m) seconds=$((${duration%m} * 60)) ;;
    *s) seconds=${duration%s} ;;
    *) seconds=$duration ;;
esac
export SOAK_SECONDS="$seconds"
exec cargo test --release --locked --test operations -- --ignored --nocapture --exact soak::soak
