"""`gridedge_env.metrics`: the one definition of the standard metrics, checked on hand-made steps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from gridedge_env.metrics import METRIC_NAMES, RolloutMetrics, daily_violation_units


def fake_sim():
    """Two batteries, one heat pump, one generator, 30-minute steps."""
    return SimpleNamespace(
        config=SimpleNamespace(v_min_pu=0.95, v_max_pu=1.05),
        n_agents=4,
        dt_h=0.5,
        agent_slices={"battery": slice(0, 2), "heatpump": slice(2, 3), "generator": slice(3, 4)},
    )


def step(cost, device, v, converged, shortfall=None, truncated=False):
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    shortfall = t(shortfall) if shortfall is not None else torch.zeros_like(t(cost))
    return SimpleNamespace(
        cost=t(cost),
        terminal_cost=0.5 * shortfall,
        device_violation=t(device),
        terminal_shortfall=shortfall,
        v_mag_pu=t(v),
        converged=torch.tensor(converged),
        truncated=truncated,
    )


def test_two_steps_of_two_rows_by_hand():
    m = RolloutMetrics(fake_sim())
    # row 0 converged both steps; row 1's second power flow failed (scored as every node at 0 pu)
    m.add(
        step(
            [[1.0, 2.0, 3.0, 0.0], [0.5, 0.5, 0.0, 0.0]],
            [[0.0, 0.1, 0.4, 0.0], [0.0, 0.0, 0.0, 0.2]],
            [[0.94, 1.00, 1.07], [1.00, 1.00, 1.00]],
            [True, True],
        )
    )
    m.add(
        step(
            [[1.0, 1.0, 1.0, 0.0], [2.0, 0.0, 0.0, 0.0]],
            [[0.0, 0.0, 0.0, 0.0], [0.3, 0.0, 0.6, 0.0]],
            [[1.00, 1.051, 0.90], [2.0, 2.0, 2.0]],
            [True, False],
            shortfall=[[1.5, 0.0, 0.7, 0.0], [0.0, 0.5, 0.0, 0.0]],
            truncated=True,
        )
    )
    s = m.summary(days=2)
    assert s["cost"] == pytest.approx((6.0 + 1.0 + 3.0 + 2.0) / 2)
    # node-steps: 12; outside: 0.94, 1.07, 1.051, 0.90 and the 3 nodes of the failed row-step
    assert s["violation_share"] == pytest.approx(7 / 12)
    assert s["violation_share_over"] == pytest.approx(2 / 12) and s["violation_share_under"] == pytest.approx(5 / 12)
    assert s["violation_sum_pu"] == pytest.approx((0.01 + 0.02 + 0.001 + 0.05 + 3 * 0.95) / 2)
    assert s["worst_violation_pu"] == pytest.approx(0.95)
    assert s["pf_failures"] == 1
    # kW of the batteries and generator times 0.5 h, per device and day; the failed row's count too
    assert s["battery_undelivered_kwh"] == pytest.approx((0.1 + 0.3) * 0.5 / 2 / 2)
    assert s["generator_undelivered_kwh"] == pytest.approx(0.2 * 0.5 / 2)
    assert s["heatpump_comfort_k_steps"] == pytest.approx((0.4 + 0.6) / 2)
    # terminal: battery kWh below the initial state of charge; heat pump K outside the band after the last step
    assert s["battery_terminal_shortfall_kwh"] == pytest.approx((1.5 + 0.5) / 2 / 2)
    assert s["heatpump_terminal_outside_k"] == pytest.approx(0.6 / 2)
    assert s["terminal_cost"] == pytest.approx(0.5 * (1.5 + 0.5 + 0.7) / 2)
    assert s["worst_agent"]["battery_undelivered_kwh"] == pytest.approx(0.3 * 0.5 / 2)
    assert s["worst_agent"]["battery_terminal_shortfall_kwh"] == pytest.approx(1.5 / 2)
    assert s["cost_by_type"] == pytest.approx(
        {"battery": (3.0 + 1.0 + 2.0 + 2.0) / 2, "heatpump": 4.0 / 2, "generator": 0.0}
    )
    assert s["v_min_pu"] == pytest.approx(0.90) and s["v_max_pu"] == pytest.approx(1.07)
    assert m.standard(2) == {k: s[k] for k in METRIC_NAMES}
    assert "device_violation" not in s  # kW and K are never added together


def test_violation_units_per_type():
    assert daily_violation_units(fake_sim()).tolist() == [0.5, 0.5, 1.0, 0.5]


def test_days_must_be_positive():
    with pytest.raises(ValueError, match="days must be >= 1"):
        RolloutMetrics(fake_sim()).summary(0)


def test_failed_power_flows_never_score_as_perfect():
    m = RolloutMetrics(fake_sim())
    nan = float("nan")
    m.add(step([[0.0] * 4], [[0.0] * 4], [[nan, nan, nan]], [False]))
    s = m.summary(days=1)
    assert s["pf_failures"] == 1
    assert s["violation_share"] == 1.0 and s["violation_share_under"] == 1.0
    assert s["violation_sum_pu"] == pytest.approx(3 * 0.95)
    assert s["worst_violation_pu"] == pytest.approx(0.95)
