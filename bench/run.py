"""Run every benchmark (bench/bench_*.py) and print one summary: each measure for procsup
beside supervisord, with the issue's target and whether it is met.

The benchmarks, in the order they run: apply (config apply: update, save, reread), cluster
(cluster mode: throughput, spread, rolling reload; needs `wrk`), hostile (hostile control
clients: daemon memory, `status` under a log flood), idle, logs, logs_daemon, monitors (memory
check and file-watch cost), restart, startup, status; `--only` takes these names.

Every option is passed on to each benchmark (see `bench/bench_X.py --help`); options one
benchmark does not know are ignored by it, so e.g. `--seconds 30` reaches bench_idle.py only.

    .venv/bin/python bench/run.py [--quick] [--commit REV] [--only restart,status]
                                  [--json FILE] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import PYTHON, SOURCE, fmt, machine, ratio, summary_table

HERE = Path(__file__).resolve().parent


def markdown(rows: list[dict[str, object]]) -> str:
    out = [
        "| measure | unit | procsup | supervisord | procsup / supervisord | target | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        p, s = r["procsup"], r["supervisord"]
        assert p is None or isinstance(p, float | int)
        assert s is None or isinstance(s, float | int)
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]  # type: ignore[index]
        out.append(
            f"| {r['measure']} | {r['unit']} | {fmt(p)} | {fmt(s)} | {ratio(p, s)} "
            f"| {r['target']} | {met} |"
        )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--only", help="comma-separated benchmark names (apply, restart, startup, ...)")
    p.add_argument("--json", metavar="FILE", help="write every benchmark's results to FILE")
    p.add_argument("--markdown", action="store_true", help="print the summary as a Markdown table")
    p.add_argument("--commit", metavar="REV", help="benchmark procsup/ as of this git revision")
    args, passed = p.parse_known_args()
    if args.commit:
        # Resolved once, so that every benchmark measures the same revision even if a commit
        # lands while they run.
        SOURCE["rev"] = subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "--short", args.commit],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        passed += ["--commit", SOURCE["rev"]]
    benches = sorted(HERE.glob("bench_*.py"))
    if args.only:
        wanted = {f"bench_{n.strip()}.py" for n in args.only.split(",")}
        benches = [b for b in benches if b.name in wanted]
    results = []
    failed = []
    with tempfile.TemporaryDirectory(prefix="psb-run-") as tmp:
        for b in benches:
            out = Path(tmp) / f"{b.stem}.json"
            print(f"\n######## {b.name}", flush=True)
            rc = subprocess.run(
                [PYTHON, str(b), *passed, "--json", str(out)], check=False
            ).returncode
            if rc != 0 or not out.exists():
                failed.append(b.name)
                continue
            results.append(json.loads(out.read_text()))
    rows = [r for res in results for r in res["rows"]]
    print("\n######## summary")
    print("   " + ", ".join(f"{k}: {v}" for k, v in machine().items()))
    print(summary_table(rows))
    if args.markdown:
        print()
        print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "results": results}, f, indent=1)
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
