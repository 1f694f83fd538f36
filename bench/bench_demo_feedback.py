"""The demo learns from its production feedback only: TRUE held-out accuracy across
traffic seeds.

Runs ``gepa-trace demo`` with its defaults (the README's first command) once per traffic
seed (``--seed``), each in a fresh output folder, as a subprocess, and reads its
``--json`` line. The optimization uses the built-in ``feedback`` metric (recorded
feedback only); the TRUE figures come from the world's answer key, applied afterwards
to every distinct recorded question of the held-out test split. The feedback-estimated
figures are the export gate's (the held-out test runs that have feedback).

    .venv/bin/python bench/bench_demo_feedback.py              # seeds 0..4
    .venv/bin/python bench/bench_demo_feedback.py --seeds 0 1

Writes the "Demo from production feedback only" section of bench/RESULTS.md. All
numbers come from the simulated world and simulated models.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADING = "Demo from production feedback only (bench/bench_demo_feedback.py)"
ROOT = Path(__file__).resolve().parent.parent


def one_seed(seed: int, extra: list[str]) -> dict:
    exe = Path(sys.executable).with_name("gepa-trace")
    with tempfile.TemporaryDirectory(prefix="gepa-bench-demo-") as tmp:
        started = time.perf_counter()
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run([str(exe), "demo", "--out", str(Path(tmp) / "out"),
                               "--seed", str(seed), "--json", *extra],
                              check=False, capture_output=True, text=True, cwd=tmp,
                              env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
        wall = time.perf_counter() - started
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"seed {seed}: exit {proc.returncode}: {proc.stderr[-2000:]}")
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        summary["review"] = review_counts(exe, summary, tmp)
    summary["wall_s"] = round(wall, 1)
    summary["cpu_s"] = round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1)
    return summary


def review_counts(exe: Path, summary: dict, cwd: str) -> dict:
    """Flags the review raises on this clean run (all candidates, and the best's): each
    one is a false positive, since no traffic was poisoned."""
    shown = subprocess.run([str(exe), "runs", "show", summary["run_id"], "--store",
                            summary["store"], "--json"], check=True, capture_output=True,
                           text=True, cwd=cwd)
    review = json.loads(shown.stdout.strip().splitlines()[-1])["review"]
    flagged = {f["candidate_id"] for f in review["flags"]}
    from sqlalchemy import func, select

    from gepa_trace.store import CandidateRow, open_store

    table = CandidateRow.__table__
    with open_store(summary["store"]).read() as conn:
        proposed = conn.execute(select(func.count()).where(
            table.c.run_id == summary["run_id"], table.c.origin != "seed")).scalar_one()
    return {"flags": len(review["flags"]), "flagged_candidates": len(flagged),
            "candidates": proposed, "best_flags": len(review["best_flags"])}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _flags(review: dict | None) -> str:
    if review is None:
        return "-"
    return (f"{review['flags']} ({review['flagged_candidates']} / "
            f"{review['candidates'] if review['candidates'] is not None else '?'})")


def table(rows: list[tuple[int, dict]]) -> list[str]:
    lines = [("| traffic seed | TRUE before | TRUE after | test questions | feedback-estimated "
             "before | feedback-estimated after | test runs with feedback | gain significant "
             "| rollouts | review flags (candidates flagged / proposed) | wall s | CPU s |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for seed, s in rows:
        lines.append(f"| {seed} | {_pct(s['true_seed_test_score'])} | "
                     f"{_pct(s['true_best_test_score'])} | {s['true_test_questions']} | "
                     f"{_pct(s['seed_test_score'])} | {_pct(s['best_test_score'])} | "
                     f"{s['test_examples']} | {'yes' if s['significant'] else 'no'} | "
                     f"{s['rollouts']} | {_flags(s.get('review'))} | {s['wall_s']:.0f} | "
                     f"{s.get('cpu_s', 0):.0f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    parser.add_argument("extra", nargs="*", help="extra `gepa-trace demo` options (after --)")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        print(f"seed {seed} ...", file=sys.stderr, flush=True)
        rows.append((seed, one_seed(seed, args.extra)))
        print("\n".join(table(rows)[-1:]), file=sys.stderr, flush=True)
    lines = table(rows)
    print("\n".join(lines))
    after = [s["true_best_test_score"] for _, s in rows]
    before = [s["true_seed_test_score"] for _, s in rows]
    ok = sum(1 for b, a in zip(before, after) if b is not None and a is not None
             and b <= 0.5 and a >= 0.8)
    verdict = (f"{ok} of {len(rows)} seeds go from <= 0.5 to >= 0.8 TRUE held-out accuracy "
               f"(mean {sum(before) / len(before):.2f} -> {sum(after) / len(after):.2f}).")
    reviewed = [s["review"] for _, s in rows]
    flagged = sum(r["flagged_candidates"] for r in reviewed)
    proposed = sum(r["candidates"] for r in reviewed)
    fp = (f"Review on clean traffic (every flag a false positive): {flagged} of {proposed} "
          f"proposed candidates flagged ({flagged / max(proposed, 1):.1%}), "
          f"{sum(r['best_flags'] for r in reviewed)} flags on a best candidate.")
    print(verdict)
    print(fp)
    if not args.no_write:
        sys.path.insert(0, str(ROOT / "bench"))
        from results import write_section

        cmd = "gepa-trace demo" + (" " + " ".join(args.extra) if args.extra else "")
        write_section(HEADING, "\n".join([
            f"## {HEADING}",
            "",
            (f"`{cmd} --seed N` (defaults otherwise: 500 runs, 1500 rollouts, split "
             f"0.5/0.2/0.3, 2 processes), {dt.date.today().isoformat()}, this machine (2 "
             "cores; CPU s is the demo's own user+system time). SIMULATED: "
            "gepa-sim/task, gepa-sim/reflect, gepa-sim/judge on the demo world. The "
            "optimization's metric is the built-in `feedback` (recorded feedback only: "
            "60% of runs have none, noisy thumbs, some corrections, a few of them wrong, "
            "vague comments). TRUE = the world's answer key on every distinct recorded "
            "question of the held-out test split, applied after the run; "
            "feedback-estimated = the export gate's held-out figure (test runs with "
            "feedback, scored by the `feedback` metric)."),
            "",
            *lines,
            "",
            verdict,
            "",
            fp,
        ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
