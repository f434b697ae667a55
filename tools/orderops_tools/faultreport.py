"""The fault suite's own figures: each fault test that passed records what it offered, injected and
compared (``record``, to the file FAULT_RESULTS names), and ``make test-faults`` writes them to
docs/reliability-results.md (``python -m orderops_tools.faultreport``), as ``make bench`` writes
docs/benchmarks.md: no figure about reliability is typed by hand.

A test records its figures only once every assertion held; one that failed is recorded by
tests/faults/conftest.py with the first line of what stopped it, and the document names it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = "FAULT_RESULTS"  # the JSON-lines file a test appends its figures to; unset: nothing recorded
ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "reliability-results.md"


def record(test: str, figures: Mapping[str, Any]) -> None:
    """Append ``test``'s figures (names to numbers, texts or mappings of them) to FAULT_RESULTS."""
    path = os.environ.get(RESULTS)
    if not path:
        return
    line = {"test": test, "at": datetime.now(UTC).isoformat(timespec="seconds"), "figures": dict(figures)}
    with open(path, "a", encoding="utf-8") as results:
        results.write(json.dumps(line, sort_keys=True, default=str) + "\n")


def record_failure(test: str, why: str, run_id: str | None = None) -> None:
    """A fault test that did not pass: named in the document with the first line of why, and the
    run id that draws its schedule and traffic again (``ORDEROPS_TEST_RUN_ID``)."""
    first = why.strip().splitlines()[0][:300] if why.strip() else "(no message)"
    record(test, {"did not pass": first + (f" (again: ORDEROPS_TEST_RUN_ID={run_id})" if run_id else "")})


def _cell(value: Any) -> str:
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_cell(v)}" for k, v in value.items()) or "—"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def render(results: list[dict], machine: Mapping[str, str], sizes: Mapping[str, str]) -> str:
    lines = ["# Reliability: figures of the last `make test-faults`", "",
             "Written by `make test-faults` (tools/orderops_tools/faultreport.py) from what each fault test "
             "recorded once all its checks had passed; do not edit by hand. What each check means: "
             "[reliability.md](reliability.md).", "",
             f"**Run:** {machine['date']} · {machine['cores']} cores ({machine['cpu']}) · {machine['memory']} · "
             f"Python {machine['python']} · Kafka {machine['kafka']} (embedded, same machine) · "
             f"faust-streaming {machine['faust-streaming']} · aiokafka {machine['aiokafka']} · "
             f"confluent-kafka {machine['confluent-kafka']}",
             "", "**Sizes:** " + " · ".join(f"`{k}`={v}" for k, v in sizes.items()), ""]
    failed = [r for r in results if "did not pass" in r["figures"]]
    if failed:
        lines += ["## Did not pass", "", "A failing test records no figures; what stopped it, from the run's output:", ""]
        lines += [f"- `{r['test']}` ({r['at']}): {r['figures']['did not pass']}" for r in failed]
        lines.append("")
    for result in results:
        if result in failed:
            continue
        lines += [f"## {result['test']}", "", f"Passed at {result['at']}.", "", "| figure | value |", "|---|---|"]
        lines += [f"| {name} | {_cell(value)} |" for name, value in result["figures"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from orderops_tools.bench import machine

    parser = argparse.ArgumentParser(prog="python -m orderops_tools.faultreport", description=__doc__)
    parser.add_argument("results", help="the JSON-lines file the fault tests recorded to (FAULT_RESULTS)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    try:
        results = [json.loads(line) for line in Path(args.results).read_text(encoding="utf-8").splitlines() if line]
    except (OSError, ValueError) as exc:
        print(f"faultreport: cannot read {args.results}: {exc}", file=sys.stderr)
        return 1
    if not results:
        print(f"faultreport: {args.results} holds no fault test: nothing written", file=sys.stderr)
        return 1
    sizes = {name: os.environ[name] for name in ("FAULT_ORDERS", "FAULT_RATE", "FAULT_KILLS", "FAULT_OUTAGE_SECONDS",
                                                 "HOSTILE_MESSAGES", "HOSTILE_EVENTS") if name in os.environ}
    Path(args.out).write_text(render(results, machine(), sizes) + "\n", encoding="utf-8")
    print(f"faultreport: {len(results)} fault test(s) written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
