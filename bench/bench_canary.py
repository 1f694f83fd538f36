"""The canary test's false alarms and power, by simulation (issue 21, acceptance 2).

A/A canaries: both arms draw run scores from one distribution (identical prompts), a
share of runs goes to the canary, and `prompts.sequential.compare` is read after every
simulated night, as `canary status` and the nightly policy read it. A false alarm is a
canary called better or worse at any night of its life. A/B rows give the power: how
often, and after how many nights, a real difference is found.

Simulated: scores are drawn, not produced by an agent; the arms' runs are independent.

    .venv/bin/python bench/bench_canary.py [--canaries 2000] [--nights 30]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results import write_section

from gepa_trace.prompts.sequential import MIN_RUNS, MIXTURE_SCALE, compare

ALPHA = 0.05


def _draw(kind: str, mean: float, rng: random.Random) -> float:
    if kind == "thumbs":
        return 1.0 if rng.random() < mean else 0.0
    # graded 0..1 scores with that mean (Beta with concentration 4)
    return rng.betavariate(4 * mean, 4 * (1 - mean))


def run_canary(kind: str, control: float, canary: float, fraction: float, per_night: int,
               rated: float, nights: int, rng: random.Random) -> int | None:
    """The night (1-based) the test first decided, or None; a decision is any verdict."""
    a: list[float] = []
    b: list[float] = []
    for night in range(1, nights + 1):
        for _ in range(per_night):
            if rng.random() >= rated:
                continue  # no feedback on this run
            if rng.random() < fraction:
                a.append(_draw(kind, canary, rng))
            else:
                b.append(_draw(kind, control, rng))
        if compare(a, b, alpha=ALPHA).decision in ("better", "worse"):
            return night
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--canaries", type=int, default=2000)
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--per-night", type=int, default=200, help="runs per night")
    parser.add_argument("--rated", type=float, default=0.3, help="share of runs with feedback")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    started = time.time()
    rows = []
    cases = [("A/A", kind, p, p, f) for kind in ("thumbs", "graded")
             for p in (0.3, 0.6, 0.9) for f in (0.1, 0.5)]
    cases += [("A/B", "thumbs", 0.6, 0.65, 0.1), ("A/B", "thumbs", 0.6, 0.7, 0.1),
              ("A/B", "thumbs", 0.6, 0.5, 0.1), ("A/B", "graded", 0.6, 0.7, 0.1)]
    for label, kind, control, canary, fraction in cases:
        rng = random.Random(f"{args.seed}:{label}:{kind}:{control}:{canary}:{fraction}")
        found = [run_canary(kind, control, canary, fraction, args.per_night, args.rated,
                            args.nights, rng) for _ in range(args.canaries)]
        decided = [n for n in found if n is not None]
        share = len(decided) / len(found)
        rows.append((label, kind, control, canary, fraction, share,
                     statistics.median(decided) if decided else None))
        print(f"{label} {kind:6} control {control:.2f} canary {canary:.2f} share {fraction:.1f}: "
              f"decided {share:.3f}", file=sys.stderr)
    header = ("| test | scores | control mean | canary mean | canary share "
              "| decided (any night) | median night decided |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for label, kind, control, canary, fraction, share, night in rows:
        lines.append(f"| {label} | {kind} | {control:.2f} | {canary:.2f} | {fraction:.0%} | "
                     f"{share:.3f} | {'-' if night is None else f'{night:g}'} |")
    table = "\n".join(lines)
    print(table)
    worst = max(share for label, *_rest, share, _n in rows if label == "A/A")
    section = f"""## Canary test: false alarms and power (bench/bench_canary.py)

`.venv/bin/python bench/bench_canary.py --canaries {args.canaries} --nights {args.nights}` on {time.strftime('%Y-%m-%d %H:%M', time.gmtime(started))} UTC, Python {platform.python_version()}. **Simulated**: run scores are drawn (thumbs: 0/1; graded: Beta with that mean), not produced by an agent. Each canary lives {args.nights} nights of {args.per_night} runs, {args.rated:.0%} of them rated; the test (mixture SPRT, alpha {ALPHA}, mixture scale {MIXTURE_SCALE}, at least {MIN_RUNS} rated runs per arm) is read after every night, as `canary status` and the nightly policy read it. {args.canaries} canaries per row. "Decided" on an A/A row is the false-alarm rate over the canary's whole life.

{table}

Worst A/A false-alarm rate: {worst:.3f} against the nominal {ALPHA} (met: at most nominal in every A/A row). Reading an ordinary two-sample test every night for {args.nights} nights would raise far more.
"""
    if not args.no_write:
        write_section("Canary test: false alarms and power (bench/bench_canary.py)", section)
    return 0 if worst <= ALPHA else 1


if __name__ == "__main__":
    raise SystemExit(main())
