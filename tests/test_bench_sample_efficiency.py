"""The acceptance lines the sample-efficiency bench prints (bench/bench_sample_efficiency.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from bench_sample_efficiency import checks


def test_each_acceptance_check_reads_met_or_not_met_from_the_per_seed_means():
    ours = {100: [0.8, 0.9], 200: [0.9, 0.9], 600: [1.0, 1.0]}
    gepa = {100: [0.6, 0.7], 200: [0.9, 0.8]}
    lines = checks(ours, gepa)
    assert lines[0].endswith("met") and "NOT" not in lines[0]  # 0.85 >= 0.65 + 0.1
    assert lines[1].endswith("met") and "NOT" not in lines[1]  # 0.85 >= 0.85
    assert lines[2].endswith("NOT met")  # 0.90 < 1.00 - 0.05
    assert "0.800 / 0.900 = 0.89, met" in lines[3]


def test_spread_between_seeds_below_seven_tenths_is_not_met():
    lines = checks({100: [0.4, 0.9, 0.7]}, {})
    assert "0.400 / 0.900 = 0.44, NOT met (3 seeds)" in lines[3]


def test_a_check_whose_budget_was_not_run_says_not_measured():
    lines = checks({100: [0.8]}, {100: [0.5]})
    assert lines[0].endswith("met")
    assert lines[1].endswith("not measured")  # no gepa@200
    assert lines[2].endswith("not measured")  # no ours@600
    assert lines[3].endswith("not measured")  # one seed has no spread
