"""Parses a Prometheus text exposition from stdin with prometheus_client's own
parser (the reference implementation) and prints it as JSON for
tests/metrics.rs: {"families": {name: type}, "samples": [[name, labels, value]]}.
Exits non-zero if the parser rejects the text or a family has no TYPE."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    text = sys.stdin.read()
    families = {}
    samples = []
    for family in text_string_to_metric_families(text):
        if family.type == "unknown":
            print(f"family {family.name} has no TYPE line", file=sys.stderr)
            return 1
        families[family.name] = family.type
        for sample in family.samples:
            samples.append([sample.name, sample.labels, sample.value])
    json.dump({"families": families, "samples": samples}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
