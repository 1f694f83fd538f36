import pytest

from gepa_trace.errors import ConfigError
from gepa_trace.prompts.gate import paired_bootstrap


def test_gate_refuses_a_candidate_equal_to_the_seed():
    scores = [1.0, 0.0, 1.0, 1.0, 0.0] * 10
    result = paired_bootstrap(scores, scores)
    assert result.gain == 0
    assert not result.significant


def test_gate_accepts_a_clear_held_out_gain():
    seed = [0.0] * 30 + [1.0] * 10
    best = [1.0] * 32 + [0.0] * 8
    result = paired_bootstrap(seed, best)
    assert result.significant
    assert result.ci_low > 0 and result.ci_low <= result.gain <= result.ci_high


def test_gate_refuses_a_noisy_small_gain():
    seed = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    best = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert not paired_bootstrap(seed, best).significant


def test_gate_is_deterministic_for_a_seed():
    seed, best = [0.0, 1.0, 0.0, 1.0] * 5, [1.0, 1.0, 0.0, 1.0] * 5
    assert paired_bootstrap(seed, best, seed=3) == paired_bootstrap(seed, best, seed=3)


def test_gate_names_bad_input():
    with pytest.raises(ConfigError, match="paired"):
        paired_bootstrap([1.0], [1.0, 0.0])
    with pytest.raises(ConfigError, match="no held-out"):
        paired_bootstrap([], [])
    with pytest.raises(ConfigError, match="confidence"):
        paired_bootstrap([1.0], [1.0], confidence=1.5)
