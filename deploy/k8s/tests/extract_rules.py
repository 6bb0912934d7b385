"""Write the rule groups of deploy/k8s/prometheus-rules.yaml (a PrometheusRule custom resource)
as a plain Prometheus rules file: what promtool checks and tests, and what a Prometheus without
the Operator loads (`rule_files:`).

    python deploy/k8s/tests/extract_rules.py [--out FILE] [--no-descriptions]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

RULES_CR = Path(__file__).resolve().parents[1] / "prometheus-rules.yaml"


def plain_rules(cr_path: Path = RULES_CR, *, descriptions: bool = True) -> dict[str, Any]:
    """``{"groups": [...]}`` of the one PrometheusRule in ``cr_path``.

    Args:
        descriptions: keep the ``description`` annotations (prose). The promtool tests drop them,
            so that they compare what an alert is made of (labels, ``summary`` with its value,
            ``runbook_url``) without repeating the prose.
    """
    docs = [d for d in yaml.safe_load_all(cr_path.read_text(encoding="utf-8")) if d]
    (rule,) = [d for d in docs if d.get("kind") == "PrometheusRule"]
    groups = rule["spec"]["groups"]
    if not descriptions:
        for group in groups:
            for r in group["rules"]:
                r.get("annotations", {}).pop("description", None)
    return {"groups": groups}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="file to write (default: stdout)")
    parser.add_argument(
        "--no-descriptions",
        action="store_true",
        help="drop the description annotations (what prometheus-rules.test.yaml expects)",
    )
    args = parser.parse_args(argv)
    rules = plain_rules(descriptions=not args.no_descriptions)
    text = yaml.safe_dump(rules, sort_keys=False, width=100)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
