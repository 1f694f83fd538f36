"""How good the optimized prompts are, across datasets: the demo cycle's held-out score
over several recorded traffic samples and optimizer seeds, per optimizer setting.

A single demo run is one draw: which questions land in validation, and the minibatch
order, move its held-out score by tens of points. This benchmark records ``--traffic``
samples of 300 production runs each (``run_traffic(seed=t)``, SQLite, simulated models,
no latency), optimizes each with every optimizer seed and every setting below through
``gepa_trace.optimize`` (agent replay with the replay cache, 600 rollouts, as the demo
runs it), and prints the held-out test score of each run and the mean per setting:

- ``stop``: validation is 10% of the examples; the run stops once the best
  candidate solves all of it (``grow_val=False``, the behaviour before growing).
- ``grow`` (shipped): the same split; once solved, validation grows with training
  examples while budget is left.
- ``half``: validation starts on half of that 10% (``val_start``).
- ``split5``: validation is 5% of the examples (train 55%).

    .venv/bin/python bench/bench_demo_quality.py        # 6 traffic samples x 2 seeds

Results go to the "Optimizer quality across demo datasets" section of bench/RESULTS.md.
All numbers are from the simulated world.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

SETTINGS = {  # name: (optimizer options, split fractions, column title)
    "stop": ({"grow_val": False}, (0.5, 0.1, 0.4), "stop when solved"),
    "grow": ({}, (0.5, 0.1, 0.4), "grow (shipped)"),
    "half": ({"val_start": "half"}, (0.5, 0.1, 0.4), "half, then grow"),
    "split5": ({}, (0.55, 0.05, 0.4), "5% split, grow"),
}


def one_run(store: str, setting: str, seed: int, budget: int) -> dict:
    import gepa_trace as gt
    from gepa_trace.demo import AGENT_NAME, build_agent, metric
    from gepa_trace.optimizer import OptimizerConfig
    from gepa_trace.replay import ReplaySettings
    from gepa_trace.replay.dataset import SplitFractions, load_examples
    from gepa_trace.store import open_store

    options, fractions, _title = SETTINGS[setting]
    options = dict(options)
    fractions = SplitFractions(*fractions)
    if options.get("val_start") == "half":
        val = load_examples(open_store(store), AGENT_NAME, fractions=fractions,
                            need_signal=False).val
        options["val_start"] = max(1, len(val) // 2)
    started = time.perf_counter()
    outcome = gt.optimize(AGENT_NAME, reflection_lm="gepa-sim/reflect",
                          entrypoint=build_agent, metric=metric,
                          budget=gt.Budget(max_rollouts=budget), store=store,
                          settings=ReplaySettings(entrypoint=build_agent, metric=metric,
                                                  task_lm="gepa-sim/task",
                                                  fractions=fractions),
                          config=OptimizerConfig(seed=seed, handle_signals=False, **options))
    summary = outcome.summary()
    held = summary["held_out"]
    return {"test": held["best_test_score"], "seed_test": held["seed_test_score"],
            "rollouts": summary["totals"]["rollouts"], "val_size": summary["val_size"],
            "stop": summary["stop_reason"], "wall": time.perf_counter() - started}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traffic", type=int, default=6, help="traffic samples (seeds 0..n-1)")
    parser.add_argument("--seeds", default="0,1", help="optimizer seeds")
    parser.add_argument("--budget", type=int, default=600)
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help="comma-separated names of the settings to run")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = [s for s in args.settings.split(",") if s]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; known: {list(SETTINGS)}")

    from gepa_trace.collectors.instrument import active_instrumentation
    from gepa_trace.demo.traffic import run_traffic

    scores: dict[str, list[float]] = {s: [] for s in settings}
    cells: dict[tuple[int, int], dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="gepa-quality-") as tmp:
        for traffic in range(args.traffic):
            store = f"sqlite:///{Path(tmp) / f'traffic-{traffic}.db'}"
            print(f"recording traffic sample {traffic} ...", file=sys.stderr, flush=True)
            run_traffic(300, store=store, seed=traffic, feedback_rate=0.5)
            active_instrumentation().shutdown()
            for seed in seeds:
                for setting in settings:
                    print(f"  seed {seed}, {setting} ...", file=sys.stderr, flush=True)
                    run = one_run(store, setting, seed, args.budget)
                    print(f"    test {run['test']:.3f}, {run['rollouts']} rollouts, "
                          f"validation {run['val_size']}, {run['stop']}", file=sys.stderr,
                          flush=True)
                    cells.setdefault((traffic, seed), {})[setting] = run
                    scores[setting].append(run["test"])

    header = ("| traffic, seed | seed prompts | " + " | ".join(SETTINGS[s][2] for s in settings)
              + " |")
    lines = [header, "|" + "---|" * (len(settings) + 2)]
    for (traffic, seed), runs in sorted(cells.items()):
        first = next(iter(runs.values()))
        lines.append(f"| {traffic}, {seed} | {first['seed_test']:.3f} | " + " | ".join(
            f"{runs[s]['test']:.3f} ({runs[s]['val_size']})" for s in settings) + " |")
    lines.append("| **mean** | | " + " | ".join(
        f"**{statistics.mean(scores[s]):.3f}**" for s in settings) + " |")
    base = settings[0]
    notes = []
    for setting in settings[1:]:
        diffs = [b - a for a, b in zip(scores[base], scores[setting])]
        wins = sum(d > 1e-9 for d in diffs)
        losses = sum(d < -1e-9 for d in diffs)
        spread = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
        notes.append(f"- {SETTINGS[setting][2]} vs {SETTINGS[base][2]}: mean difference {statistics.mean(diffs):+.3f} "
                     f"(standard error {spread:.3f}), {wins} better, {losses} worse, "
                     f"{len(diffs) - wins - losses} equal")
    table = "\n".join(lines)
    print(table)
    print("\n".join(notes))
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results import write_section  # bench/results.py, beside this file

        when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        heading = "Optimizer quality across demo datasets (bench/bench_demo_quality.py)"
        section = (
            f"`.venv/bin/python bench/bench_demo_quality.py` on {when}: {args.traffic} "
            f"samples of 300 recorded demo runs (traffic seeds 0..{args.traffic - 1}) x "
            f"optimizer seeds {args.seeds}, {args.budget} rollouts each, agent replay with "
            "the replay cache, simulated models. Each cell is the best candidate's "
            "held-out test score (validation size at the end in brackets). One demo run "
            "is one draw from this spread.\n\n" + table + "\n\n" + "\n".join(notes))
        write_section(heading, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
