"""Issue 23, acceptance 1-2: quality per rollout budget, ours beside the `gepa` package.

SIMULATED: every number comes from the simulated models (``gepa-sim/task`` runs the
agent, ``gepa-sim/reflect`` reflects), without injected latency: this measures quality,
not time.

For each world and seed s: a SQLite store of production runs of the seed prompts
(traffic seed s), then, each on a fresh copy of that store:

- ours: the real command, ``gepa-trace optimize ... --budget-rollouts B --seed s --json``
  (``--code DIR``: DIR/.venv/bin/gepa-trace instead, to compare a branch with main);
- gepa: ``gepa.optimize`` (bench/gepa_script.py) with ``max_metric_calls`` B and seed s,
  on the same train / validation split read from the same store, with an adapter that
  runs the same agent and metric;
- the seed prompts.

Each best (ours: the texts of the ``best_prompts`` versions, read back from the store's
prompt registry; gepa: its best candidate) is scored the same way afterwards: the agent
with those prompts on the split's held-out test examples, scored by the world's oracle.
Budgets 50-400 for both; 600 for ours alone, the reference of "within 0.05 of our own
score at 600".

    .venv/bin/python bench/bench_sample_efficiency.py                 # all, 5 seeds
    .venv/bin/python bench/bench_sample_efficiency.py --worlds demo --seeds 0,1 \\
        --budgets 100,200 --no-write

Progress (one line per finished row) goes to stderr; the tables and the checks to
stdout, and to a section of bench/RESULTS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gepa_script  # bench/, beside this file
from bench_command import AGENTS, ROOT, record_store

TASK, REFLECT = "gepa-sim/task", "gepa-sim/reflect"
#: Budgets our command alone runs: the reference the 200-rollout score is held to.
OURS_ONLY = {600}

#: The worlds: a spec in the shape of bench/gepa_script.py, or ``{"module": M}`` for a
#: world module with AGENT_NAME, build_agent, metric (its oracle), run_traffic and
#: SEED_PROMPTS.
WORLDS = {
    "demo": AGENTS["demo"],
    "receipts": {"module": "gepa_trace.worlds.receipts"},
    # a stand-in second world until receipts exists: tests/apps/people_app.py
    "people": {**AGENTS["people"], "oracle": "bench_sample_efficiency:people_oracle"},
}


def world_spec(name: str) -> dict:
    """The full spec of a world of WORLDS (a world module is imported to read its name)."""
    world = WORLDS[name]
    if "module" not in world:
        return world
    module = world["module"]
    try:
        agent = importlib.import_module(module).AGENT_NAME
    except ImportError as exc:
        raise SystemExit(f"world {name!r} needs the module {module}, which cannot be "
                         f"imported here: {exc}") from None
    return {"agent": agent, "entrypoint": f"{module}:build_agent",
            "metric": f"{module}:metric", "seed_prompts": f"{module}:SEED_PROMPTS",
            "traffic": f"{module}:run_traffic", "app_dir": None}


def people_oracle(example, output, trace=None):
    """people-desk's truth (its own metric knows only the answers users gave)."""
    import people_app

    from gepa_trace.optimizer.protocols import Score

    right = people_app.ANSWERS.get(str(example.inputs.get("question")))
    return Score(1.0 if str(output).strip().rstrip(".") == right else 0.0)


# ----------------------------------------------------------------- one row


def record(name: str, world: dict, path: str, runs: int, seed: int) -> tuple[str, int, str]:
    record_store(world, Path(path), runs, TASK, seed=seed)
    return name, seed, path


def run_row(row: dict) -> dict:
    """One optimization (``tool`` ours / gepa / seed) on a fresh copy of the row's store,
    and its best prompts' held-out test score."""
    world, tool, budget, seed = row["world"], row["tool"], row["budget"], row["seed"]
    pristine = Path(row["store"])
    copy = pristine.with_name(f"{pristine.stem}-{tool}-{budget}.db")
    shutil.copy(pristine, copy)
    url = f"sqlite:///{copy}"
    data = gepa_script.load_split(world, url)
    seed_prompts = gepa_script.seed_prompts_of(world)
    started = time.monotonic()
    val, rollouts = None, 0
    if tool == "ours":
        summary = run_command(world, url, budget, seed, row["workers"], row["code"])
        prompts = stored_prompts(url, summary["best_prompts"], seed_prompts)
        val = summary["best_val_score"]
        rollouts = summary["spent"]["phases"]["search"]["rollouts"]  # as gepa's count
    elif tool == "gepa":
        result = gepa_script.optimize(world, data, seed_prompts=seed_prompts, task=TASK,
                                      reflect=REFLECT, budget=budget, seed=seed,
                                      threads=row["workers"])
        prompts = gepa_script.with_instructions(seed_prompts, result.best_candidate)
        val, rollouts = result.val_aggregate_scores[result.best_idx], result.total_metric_calls
    else:
        prompts = seed_prompts
    wall = time.monotonic() - started
    test = gepa_script.test_score(world, prompts, data.test, task=TASK, threads=row["workers"])
    copy.unlink()
    return {"name": row["name"], "tool": tool, "budget": budget, "seed": seed, "test": test,
            "val": val, "rollouts": rollouts, "wall": wall, "n_test": len(data.test)}


def run_command(world: dict, url: str, budget: int, seed: int, workers: int,
                code: str | None) -> dict:
    """``gepa-trace optimize --json``'s summary; ``code``: a checkout whose ``.venv`` to
    run instead of this one's."""
    bin_dir = Path(code) / ".venv" / "bin" if code else Path(sys.executable).parent
    command = [str(bin_dir / "gepa-trace"), "optimize", "--agent", world["agent"],
               "--entrypoint", world["entrypoint"], "--metric", world["metric"],
               "--task-lm", TASK, "--reflection-lm", REFLECT, "--budget-rollouts", str(budget),
               "--workers", str(workers), "--seed", str(seed), "--store", url, "--json"]
    if world["app_dir"]:
        command += ["--app-dir", world["app_dir"]]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"gepa-trace optimize exited {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout)[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stored_prompts(url: str, best: dict[str, str], seed_prompts):
    """The seed prompts with each component's best version as the store's prompt
    registry holds it (what `gepa-trace prompts show` prints)."""
    from gepa_trace.prompts import PromptVersion
    from gepa_trace.prompts.registry import get_version
    from gepa_trace.store import open_store

    store = open_store(url)
    prompts = seed_prompts
    for component, version in best.items():
        stored = get_version(store, version, component)
        prompts = prompts.with_version(PromptVersion(component, stored.messages))
    return prompts


# ----------------------------------------------------------------- tables and checks


def checks(ours: dict[int, list[float]], gepa: dict[int, list[float]]) -> list[str]:
    """Acceptance 1 and 2 of issue 23 as met / NOT met lines, from the per-seed test
    scores by budget; a check whose budget was not run says so."""
    def mean(scores: dict[int, list[float]], budget: int) -> float | None:
        return statistics.mean(scores[budget]) if scores.get(budget) else None

    def line(text: str, left: float | None, right: float | None, margin: float) -> str:
        if left is None or right is None:
            return f"{text}: not measured"
        verdict = "met" if left >= right + margin - 1e-9 else "NOT met"
        return f"{text}: {left:.3f} vs {right + margin:.3f}, {verdict}"

    lines = [line("ours@100 >= gepa@100 + 0.1", mean(ours, 100), mean(gepa, 100), 0.1),
             line("ours@100 >= gepa@200", mean(ours, 100), mean(gepa, 200), 0.0),
             line("ours@200 >= ours@600 - 0.05", mean(ours, 200), mean(ours, 600), -0.05)]
    at_100 = ours.get(100) or []
    if len(at_100) < 2:
        lines.append("lowest / highest seed of ours@100 >= 0.7: not measured")
    else:
        ratio = min(at_100) / max(at_100) if max(at_100) > 0 else 0.0
        lines.append(f"lowest / highest seed of ours@100 >= 0.7: {min(at_100):.3f} / "
                     f"{max(at_100):.3f} = {ratio:.2f}, {'met' if ratio >= 0.7 else 'NOT met'}"
                     f" ({len(at_100)} seeds)")
    return lines


def _cell(scores: list[float]) -> str:
    if not scores:
        return "-"
    return (f"{statistics.mean(scores):.3f} ("
            + " / ".join(f"{s:.2f}" for s in scores) + ")")


def _mean(values: list[float], digits: int = 3) -> str:
    return f"{statistics.mean(values):.{digits}f}" if values else "-"


def table(rows: list[dict], budgets: list[int]) -> str:
    """One world's rows: per budget, test mean (per seed, in seed order) and val mean of
    both optimizers, and their mean wall seconds."""
    def of(tool: str, budget: int) -> list[dict]:
        return sorted((r for r in rows if r["tool"] == tool and r["budget"] == budget),
                      key=lambda r: r["seed"])

    lines = [("| budget | ours test, mean (per seed) | ours val | ours s | "
              "gepa test, mean (per seed) | gepa val | gepa s |"),
             "|---|---|---|---|---|---|---|"]
    seed = of("seed", 0)
    lines.append(f"| seed prompts | {_cell([r['test'] for r in seed])} | | | | | |")
    for budget in budgets:
        ours, gepa = of("ours", budget), of("gepa", budget)
        lines.append(
            f"| {budget} | {_cell([r['test'] for r in ours])} "
            f"| {_mean([r['val'] for r in ours])} | {_mean([r['wall'] for r in ours], 1)} "
            f"| {_cell([r['test'] for r in gepa])} | {_mean([r['val'] for r in gepa])} "
            f"| {_mean([r['wall'] for r in gepa], 1)} |")
    return "\n".join(lines)


def by_budget(rows: list[dict], tool: str) -> dict[int, list[float]]:
    """Test scores per budget, in seed order."""
    scores: dict[int, list[float]] = {}
    for r in sorted(rows, key=lambda r: r["seed"]):
        if r["tool"] == tool:
            scores.setdefault(r["budget"], []).append(r["test"])
    return scores


# ----------------------------------------------------------------- main


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def plan(names: list[str], worlds: dict[str, dict], stores: dict, seeds: list[int],
         budgets: list[int], args) -> list[dict]:
    """Every row, smallest budget first, ours and gepa side by side per seed."""
    rows = []
    for name in names:
        for seed in seeds:
            rows.append({"name": name, "tool": "seed", "budget": 0, "seed": seed})
    for budget in sorted(budgets):
        for seed in seeds:
            for name in names:
                rows.append({"name": name, "tool": "ours", "budget": budget, "seed": seed})
                if not args.no_gepa and budget not in OURS_ONLY:
                    rows.append({"name": name, "tool": "gepa", "budget": budget, "seed": seed})
    return [{**r, "world": worlds[r["name"]], "store": stores[r["name"], r["seed"]],
             "workers": args.workers, "code": args.code} for r in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", default="demo,receipts",
                        help=f"comma-separated, of {', '.join(WORLDS)}")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--budgets", default="50,100,200,400,600",
                        help=f"rollouts; gepa runs each but {sorted(OURS_ONLY)}")
    parser.add_argument("--runs", type=int, default=200,
                        help="recorded production runs per store")
    parser.add_argument("--workers", type=int, default=4,
                        help="our --workers, gepa's adapter threads, the test's threads")
    parser.add_argument("--code", default=None, metavar="DIR",
                        help="run the gepa-trace of this checkout's .venv (e.g. a branch)")
    parser.add_argument("--no-gepa", action="store_true", help="our command alone")
    parser.add_argument("--jobs", type=int, default=2, help="rows run at once, one process each")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    names = [n for n in args.worlds.split(",") if n]
    unknown = [n for n in names if n not in WORLDS]
    if unknown:
        parser.error(f"unknown world(s) {', '.join(unknown)}; known: {', '.join(WORLDS)}")
    if args.code and not (Path(args.code) / ".venv" / "bin" / "gepa-trace").exists():
        parser.error(f"--code {args.code}: no .venv/bin/gepa-trace there")
    worlds = {n: world_spec(n) for n in names}
    seeds, budgets = _ints(args.seeds), sorted(_ints(args.budgets))
    started = time.monotonic()
    done: list[dict] = []
    failed: list[str] = []
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp, \
            ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = [pool.submit(record, n, worlds[n], str(Path(tmp) / f"{n}-{s}.db"),
                               args.runs, s) for n in names for s in seeds]
        stores = {}
        for future in as_completed(futures):
            name, seed, path = future.result()
            stores[name, seed] = path
            print(f"recorded {name} seed {seed} ({time.monotonic() - started:.0f} s)",
                  file=sys.stderr, flush=True)
        rows = plan(names, worlds, stores, seeds, budgets, args)
        futures = {pool.submit(run_row, row): row for row in rows}
        for future in as_completed(futures):
            try:
                r = future.result()
            except Exception as exc:  # noqa: BLE001 - one failed row; the others go on
                row = futures[future]
                failed.append(f"{row['name']} seed {row['seed']} {row['tool']}@"
                              f"{row['budget']}: {exc}")
                print(f"FAILED {failed[-1]}", file=sys.stderr, flush=True)
                continue
            done.append(r)
            val = "-" if r["val"] is None else f"{r['val']:.3f}"
            print(f"[{len(done) + len(failed)}/{len(rows)}] {r['name']} seed {r['seed']} "
                  f"{r['tool']}" + (f"@{r['budget']}" if r["tool"] != "seed" else "")
                  + f": test {r['test']:.3f} (n={r['n_test']}) val {val} rollouts "
                  f"{r['rollouts']} in {r['wall']:.1f} s ({time.monotonic() - started:.0f} s)",
                  file=sys.stderr, flush=True)
    report = []
    for name in names:
        rows = [r for r in done if r["name"] == name]
        report.append(f"### {name} ({worlds[name]['agent']})\n\n{table(rows, budgets)}\n\n"
                      + "\n".join(f"- {c}" for c in checks(by_budget(rows, "ours"),
                                                           by_budget(rows, "gepa"))))
    text = "\n\n".join(report)
    print(text)
    if failed:  # a table with holes is not written as a result
        print(f"{len(failed)} row(s) failed, RESULTS.md not updated; the first: {failed[0]}",
              file=sys.stderr)
        return 1
    if not args.no_write:
        write(text, args, argv, time.monotonic() - started)
    return 0


def write(text: str, args, argv, seconds: float) -> None:
    from results import measured_with, write_section  # bench/results.py, beside this file

    heading = "Sample efficiency vs gepa, SIMULATED (bench/bench_sample_efficiency.py)"
    section = (
        f"## {heading}\n\nSIMULATED models (gepa-sim/task, gepa-sim/reflect), no injected "
        f"latency. {measured_with('bench_sample_efficiency.py', argv)}, {seconds / 60:.0f} "
        f"min in all. Per world and seed s: {args.runs} recorded production runs of the "
        f"seed prompts (traffic seed s); each row on a fresh copy of that store: ours is "
        f"`gepa-trace optimize --budget-rollouts B --seed s`"
        + (f" of {args.code}" if args.code else "")
        + f", gepa is `gepa.optimize(max_metric_calls=B, seed=s)` on the same train / "
        f"validation split. Both bests scored the same way: the agent with them on the "
        f"split's held-out test, by the world's oracle; per-seed test scores in seed order "
        f"({args.seeds}). Val is each optimizer's own validation score of its best (ours may "
        f"have grown its validation set). Wall seconds per optimization (ours: the whole "
        f"command, with its start-up, preflight and own held-out test; gepa: the "
        f"`gepa.optimize` call in a warm process), {args.workers} workers, {args.jobs} rows "
        f"at once on a machine shared with other jobs: indicative only.\n\n{text}\n")
    write_section(heading, section)


if __name__ == "__main__":
    raise SystemExit(main())
