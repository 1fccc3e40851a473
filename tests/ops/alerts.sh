#!/usr/bin/env bash
# The alert rules as Prometheus loads them: `promtool check rules` on config/alerts.yml (syntax,
# PromQL, templates), then `promtool test rules` on tests/ops/alerts_test.yml (each alert fires
# on the series that mean trouble, with its labels and text, and not on healthy ones). That
# every metric the rules and the dashboard name is exported by a live sidegate is checked by
# `cargo test --test operations observability::`.
#
#   tests/ops/alerts.sh        installs Debian's `prometheus` (for promtool) when missing
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v promtool >/dev/null || (source cross/targets.sh && cross_apt prometheus)
promtool check rules config/alerts.yml
promtool test rules tests/ops/alerts_test.yml
