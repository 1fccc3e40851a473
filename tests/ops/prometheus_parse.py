"""Parses a Prometheus text exposition from stdin with the Prometheus project's own Python
client parser and prints every sample as JSON, for tests/operations/operations.rs to check against the
traffic it sent. Exits non-zero on anything the parser rejects."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    if not family.documentation:
        sys.exit(f"family {family.name} has no HELP")
    if family.type not in ("counter", "gauge"):
        sys.exit(f"family {family.name} has type {family.type}")
    for s in family.samples:
        samples.append(
            {"family": family.name, "type": family.type, "name": s.name, "labels": s.labels, "value": s.value}
        )
json.dump(samples, sys.stdout)
