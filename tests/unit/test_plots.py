"""The paper's box figures stay readable: a log value axis when a few extremes would flatten the boxes."""

import numpy as np

from expert_router.analysis.plots import value_scale


def test_one_stalled_token_puts_the_axis_on_a_log_scale():
    """A 2-s TPOT beside medians of 10-60 ms (the demo's Fig. 5) drew every box in the bottom pixel row."""
    rng = np.random.default_rng(0)
    groups = [rng.uniform(0.01, 0.02, 500), np.append(rng.uniform(0.04, 0.06, 500), 2.0)]
    assert value_scale(groups) == "log"


def test_a_narrow_spread_keeps_a_linear_axis():
    rng = np.random.default_rng(0)
    assert value_scale([rng.uniform(0.01, 0.02, 500), rng.uniform(0.04, 0.08, 500)]) == "linear"


def test_zero_or_missing_values_keep_a_linear_axis():
    assert value_scale([np.array([0.0, 0.01, 5.0])]) == "linear"
    assert value_scale([np.array([]), np.array([np.nan])]) == "linear"
    assert value_scale([]) == "linear"
