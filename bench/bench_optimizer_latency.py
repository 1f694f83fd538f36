"""Where the optimizer's wall time goes: the as-shipped run of bench_optimizer_vs_gepa.py
(agent replay with the replay cache in worker processes) at several injected latencies
per LLM call, and the least-squares line ``wall = a + b * latency`` through the means.

``a`` is what the run would take if every LLM answered at once (CPU, processes, the
store); ``b`` is how many LLM round trips lie one after another on its critical path
(reflection calls, and the agent's own calls inside each rollout the next step waits
for). A large ``b`` says the time is in GEPA's chain of dependent steps, not in the
number of rollouts; a large ``a`` says it is in CPU.

    .venv/bin/python bench/bench_optimizer_latency.py                # 0, 50, 100, 200 ms
    .venv/bin/python bench/bench_optimizer_latency.py --latencies 0,100 --seeds 0

All numbers are from the simulated world and are labelled so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_optimizer_vs_gepa import run_ours_processes

from gepa_trace.demo import SEED_PROMPTS, questions
from gepa_trace.demo.evaluator import accuracy
from gepa_trace.lm import LM
from gepa_trace.optimizer.config import LOOKAHEAD


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y against x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - slope * mx, slope


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latencies", default="0,50,100,200",
                        help="injected ms per LLM call, comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="optimizer seeds, comma-separated")
    parser.add_argument("--budget", type=int, default=600)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--lookahead", type=int, default=LOOKAHEAD)
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(argv)

    latencies = [float(x) for x in args.latencies.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    if len(latencies) < 2:
        parser.error("--latencies needs at least two values to fit a line")
    train, val, test = questions(40, seed=101), questions(30, seed=202), questions(100, seed=303)
    seed_test, _ = accuracy(SEED_PROMPTS, test, threads=4)
    print("warming up ...", file=sys.stderr, flush=True)
    LM("gepa-sim/reflect", role="reflection")("warm up")
    run_ours_processes(train[:3], val[:3], 6, 0.0, args.workers, 0, args.lookahead,
                       args.processes)  # starts the worker processes, kept for the runs
    rows = []
    for latency in latencies:
        walls, cpus, tests = [], [], []
        for seed in seeds:
            print(f"latency {latency:g} ms, seed {seed} ...", file=sys.stderr, flush=True)
            cpu = time.process_time()
            row = run_ours_processes(train, val, args.budget, latency, args.workers, seed,
                                     args.lookahead, args.processes)
            cpus.append(time.process_time() - cpu + row["child_cpu"])
            walls.append(row["wall"])
            tests.append(accuracy(row["prompts"], test, threads=4)[0])
            print(f"  done in {row['wall']:.1f}s", file=sys.stderr, flush=True)
        rows.append((latency, walls, cpus, tests))

    lines = ["| ms per LLM call | wall s (per seed) | mean wall s | CPU s | test |",
             "|---|---|---|---|---|"]
    for latency, walls, cpus, tests in rows:
        lines.append(f"| {latency:g} | {' / '.join(f'{w:.1f}' for w in walls)} | "
                     f"{sum(walls) / len(walls):.1f} | {sum(cpus) / len(cpus):.1f} | "
                     f"{sum(tests) / len(tests):.3f} |")
    table = "\n".join(lines)
    intercept, slope = fit([(lat, sum(w) / len(w)) for lat, w, _c, _t in rows])
    verdict = (f"wall = {intercept:.1f} s + {slope * 1000:.0f} x latency: with instant LLMs "
               f"the run would take {intercept:.1f} s; each ms of latency per call adds "
               f"{slope:.3f} s, so about {slope * 1000:.0f} LLM round trips lie one after "
               f"another on the critical path (at 100 ms they are {slope * 100:.1f} s of the "
               f"{intercept + slope * 100:.1f} s the line gives)")
    print(table)
    print(verdict)
    if not args.no_write:
        from results import write_section  # bench/results.py, beside this file

        heading = "Optimizer wall time against LLM latency (bench/bench_optimizer_latency.py)"
        command = "bench/bench_optimizer_latency.py " + " ".join(argv or sys.argv[1:])
        when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        write_section(heading, (
            f"## {heading}\n\n`.venv/bin/python {command.strip()}` on {when}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}. The as-shipped row "
            f"of the optimizer benchmark (agent replay with the replay cache in "
            f"{args.processes} worker processes, {args.workers} workers, lookahead "
            f"{args.lookahead}, budget {args.budget} rollouts, 40 train / 30 validation "
            f"questions) at several injected latencies per LLM call, seeds {args.seeds}; "
            f"test is the held-out score of the best prompts (seed prompts: "
            f"{seed_test:.3f}). Simulated world. CPU s includes the worker processes.\n\n"
            f"{table}\n\n- {verdict}\n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
