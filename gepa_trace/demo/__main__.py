"""``python -m gepa_trace.demo accuracy [--n 200] [--seed 0] [--model gepa-sim/task]``

Prints the example agent's accuracy on ``n`` generated questions with ``SEED_PROMPTS``
and with the hand-written ``BEST_PROMPTS``. With the default model the numbers come from
the simulated world and are labelled so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gepa_trace.demo",
                                     description="The example agent of gepa-trace.")
    sub = parser.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy", help="accuracy of the seed and the hand-written prompts")
    acc.add_argument("--n", type=int, default=200, help="number of questions (default 200)")
    acc.add_argument("--seed", type=int, default=0, help="seed of the questions (default 0)")
    acc.add_argument("--model", default="gepa-sim/task",
                     help="litellm model string of the agent (default gepa-sim/task)")
    acc.add_argument("--threads", type=int, default=1)
    acc.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)

    from gepa_trace.demo import BEST_PROMPTS, SEED_PROMPTS, questions
    from gepa_trace.demo.evaluator import accuracy

    examples = questions(args.n, seed=args.seed)
    simulated = args.model.startswith("gepa-sim/")
    results = {}
    for name, prompts in (("SEED_PROMPTS", SEED_PROMPTS), ("BEST_PROMPTS", BEST_PROMPTS)):
        started = time.monotonic()
        mean, rollouts = accuracy(prompts, examples, model=args.model, threads=args.threads)
        by_kind: dict[str, list[float]] = {}
        for ex, r in zip(examples, rollouts):
            by_kind.setdefault(ex.meta["kind"], []).append(r.score)
        results[name] = {"accuracy": mean, "correct": int(sum(r.score for r in rollouts)),
                         "n": len(examples), "seconds": round(time.monotonic() - started, 2),
                         "by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())}}
    if args.json:
        print(json.dumps({"model": args.model, "simulated": simulated, "seed": args.seed,
                          "results": results}, indent=2))
        return 0
    label = " (SIMULATED: gepa-sim/task, not a real LLM)" if simulated else ""
    print(f"demo-qa accuracy on {args.n} generated questions, seed {args.seed}, "
          f"model {args.model}{label}")
    for name, r in results.items():
        kinds = ", ".join(f"{k} {v:.0%}" for k, v in r["by_kind"].items())
        print(f"  {name:13s} {r['accuracy']:6.1%}  ({r['correct']}/{r['n']}, "
              f"{r['seconds']:.1f}s)  [{kinds}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
