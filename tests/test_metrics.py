"""`gridedge_env.metrics`: the one definition of the standard metrics, checked on hand-made steps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from gridedge_env.metrics import METRIC_NAMES, RolloutMetrics


def fake_sim(n_agents: int = 3):
    return SimpleNamespace(
        config=SimpleNamespace(v_min_pu=0.95, v_max_pu=1.05),
        n_agents=n_agents,
        agent_slices={"battery": slice(0, 2), "generator": slice(2, 3)},
    )


def step(cost, device, v, converged):
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    return SimpleNamespace(cost=t(cost), device_violation=t(device), v_mag_pu=t(v), converged=torch.tensor(converged))


def test_two_steps_of_two_rows_by_hand():
    m = RolloutMetrics(fake_sim())
    # row 0 converged both steps; row 1's second power flow failed (its voltages are left out)
    m.add(
        step(
            [[1.0, 2.0, 3.0], [0.5, 0.5, 0.0]],
            [[0.0, 0.1, 0.0], [0.0, 0.0, 0.2]],
            [[0.94, 1.00, 1.07], [1.00, 1.00, 1.00]],
            [True, True],
        )
    )
    m.add(
        step(
            [[1.0, 1.0, 1.0], [2.0, 0.0, 0.0]],
            [[0.0, 0.0, 0.0], [0.3, 0.0, 0.0]],
            [[1.00, 1.051, 0.90], [2.0, 2.0, 2.0]],
            [True, False],
        )
    )
    s = m.summary(days=2)
    assert s["cost"] == pytest.approx((6.0 + 1.0 + 3.0 + 2.0) / 2)
    # node-steps: 3 + 3 + 3 converged and 3 failed = 12; outside: 0.94, 1.07, 1.051, 0.90 and the 3 failed ones
    assert s["violation_share"] == pytest.approx(7 / 12)
    assert s["violation_share_over"] == pytest.approx(2 / 12) and s["violation_share_under"] == pytest.approx(2 / 12)
    assert s["violation_sum_pu"] == pytest.approx((0.01 + 0.02 + 0.001 + 0.05) / 2)
    assert s["worst_violation_pu"] == pytest.approx(0.05)
    assert s["pf_failures"] == 1
    # device violation over every row (also the failed one): 0.6 over 2 rows x 2 steps x 3 agents
    assert s["device_violation"] == pytest.approx(0.6 / 12)
    assert s["device_violation_by_type"] == pytest.approx({"battery": 0.4 / 8, "generator": 0.2 / 4})
    assert s["cost_by_type"] == pytest.approx({"battery": (3.0 + 1.0 + 2.0 + 2.0) / 2, "generator": 4.0 / 2})
    assert s["v_min_pu"] == pytest.approx(0.90) and s["v_max_pu"] == pytest.approx(1.07)
    assert m.standard(2) == {k: s[k] for k in METRIC_NAMES}


def test_days_must_be_positive():
    with pytest.raises(ValueError, match="days must be >= 1"):
        RolloutMetrics(fake_sim()).summary(0)


def test_failed_power_flows_never_score_as_perfect():
    m = RolloutMetrics(fake_sim())
    nan = float("nan")
    m.add(step([[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]], [[nan, nan, nan]], [False]))
    s = m.summary(days=1)
    assert s["pf_failures"] == 1
    assert s["violation_share"] == 1.0
    assert s["violation_share_under"] == 0.0 and s["violation_share_over"] == 0.0
