"""Tests of the single-phase device models in ``gridedge_env.devices``."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge_env import devices as dev

DT_H = 0.5
F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _battery(**overrides: float) -> dev.BatteryParams:
    """One battery with round numbers, [1] tensors."""
    values = {
        "p_max_kw": 5.0,
        "e_max_kwh": 10.0,
        "eta_charge": 0.95,
        "eta_discharge": 0.9,
        "soc_min_kwh": 1.0,
        "soc_max_kwh": 9.0,
        "degradation_cost_per_kwh": 0.02,
    }
    values.update(overrides)
    return dev.BatteryParams(**{k: torch.tensor([v], dtype=F64) for k, v in values.items()})


def _heatpump(**overrides: float) -> dev.HeatPumpParams:
    values = {
        "p_max_kw": 3.0,
        "r_k_per_kw": 4.0,
        "c_kwh_per_k": 5.0,
        "carnot_efficiency": 0.45,
        "t_min_c": 20.0,
        "t_max_c": 23.0,
    }
    values.update(overrides)
    return dev.HeatPumpParams(**{k: torch.tensor([v], dtype=F64) for k, v in values.items()})


def _generator(ramp_kw_per_h: float = math.inf) -> dev.GeneratorParams:
    return dev.GeneratorParams(
        p_min_kw=torch.tensor([0.0], dtype=F64),
        p_max_kw=torch.tensor([8.0], dtype=F64),
        fuel_cost_c1_per_kwh=torch.tensor([0.15], dtype=F64),
        fuel_cost_c2_per_kw2h=torch.tensor([0.005], dtype=F64),
        ramp_kw_per_h=torch.tensor([ramp_kw_per_h], dtype=F64),
    )


def _t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


# ----------------------------------------------------------------------------------------------------------
# Battery
# ----------------------------------------------------------------------------------------------------------


def test_battery_unconstrained_charge_and_discharge_energy_balance() -> None:
    params = _battery()
    soc = _t([5.0], [5.0])
    out = dev.battery_step(params, soc, _t([0.4], [-0.4]), DT_H)
    # 2 kW either way is feasible from the middle: delivered == requested, no violation.
    torch.testing.assert_close(out.p_kw, _t([2.0], [-2.0]))
    torch.testing.assert_close(out.violation, torch.zeros_like(soc))
    # Charging stores eta_c * p * dt; discharging 2 kW at the grid drains p * dt / eta_d from the cells.
    torch.testing.assert_close(out.next_state - soc, _t([0.95 * 2.0 * DT_H], [-2.0 * DT_H / 0.9]))
    torch.testing.assert_close(out.device_cost, _t([0.02 * 2.0 * DT_H], [0.02 * 2.0 * DT_H]))


def test_battery_round_trip_returns_eta_c_times_eta_d() -> None:
    params = _battery(eta_charge=0.92, eta_discharge=0.96)
    soc0 = _t([3.0])
    charged = dev.battery_step(params, soc0, _t([0.6]), DT_H)
    e_in_kwh = charged.p_kw * DT_H
    # Discharge exactly back to soc0 (ask for more than is there, but bound the state by soc0 via soc_min).
    back = dev.battery_step(dataclasses.replace(params, soc_min_kwh=soc0[0]), charged.next_state, _t([-1.0]), DT_H)
    e_out_kwh = -back.p_kw * DT_H
    torch.testing.assert_close(back.next_state, soc0)
    torch.testing.assert_close(e_out_kwh, 0.92 * 0.96 * e_in_kwh)


def test_battery_cannot_discharge_below_empty() -> None:
    params = _battery()
    out = dev.battery_step(params, _t([1.0]), _t([-1.0]), DT_H)
    torch.testing.assert_close(out.p_kw, _t([0.0]))
    torch.testing.assert_close(out.next_state, _t([1.0]))
    torch.testing.assert_close(out.violation, _t([5.0]))
    # Nearly empty: it delivers exactly what is left above soc_min, grid-side (times eta_d).
    out = dev.battery_step(params, _t([1.5]), _t([-1.0]), DT_H)
    torch.testing.assert_close(out.p_kw, _t([-0.5 * 0.9 / DT_H]))
    torch.testing.assert_close(out.next_state, _t([1.0]))
    torch.testing.assert_close(out.violation, _t([5.0 - 0.9]))


def test_battery_cannot_charge_above_full() -> None:
    params = _battery()
    out = dev.battery_step(params, _t([8.5]), _t([1.0]), DT_H)
    torch.testing.assert_close(out.p_kw, _t([0.5 / (0.95 * DT_H)]))
    torch.testing.assert_close(out.next_state, _t([9.0]))
    torch.testing.assert_close(out.violation, _t([5.0 - 0.5 / (0.95 * DT_H)]))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    dt_h=st.floats(0.05, 3.0),
    soc_frac=st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6),
    action=st.lists(st.floats(-1.0, 1.0), min_size=6, max_size=6),
)
def test_battery_projection_properties(seed: int, dt_h: float, soc_frac: list, action: list) -> None:
    params = dev.sample_battery_params(6, _gen(seed))
    frac = torch.tensor([soc_frac], dtype=F64)
    soc = params.soc_min_kwh + frac * (params.soc_max_kwh - params.soc_min_kwh)
    a = torch.tensor([action], dtype=F64)
    out = dev.battery_step(params, soc, a, dt_h)
    request = a * params.p_max_kw
    tol = 1e-9
    # Bounds hold after projection.
    assert torch.all(out.next_state >= params.soc_min_kwh - tol)
    assert torch.all(out.next_state <= params.soc_max_kwh + tol)
    assert torch.all(out.p_kw.abs() <= params.p_max_kw + tol)
    # The delivered power is on the same side as the request and no larger in magnitude.
    assert torch.all(out.p_kw * request >= -tol)
    assert torch.all(out.p_kw.abs() <= request.abs() + tol)
    # Violation is exactly the projected-away part and non-negative.
    torch.testing.assert_close(out.violation, (request - out.p_kw).abs())
    assert torch.all(out.violation >= 0)
    # Energy balance of the cells.
    expected = soc + dt_h * (
        params.eta_charge * out.p_kw.clamp(min=0) - (-out.p_kw).clamp(min=0) / params.eta_discharge
    )
    torch.testing.assert_close(out.next_state, expected)
    # Where a request was cut back, the battery ended at a soc bound (the cut was necessary).
    cut = out.violation > 1e-7
    at_bound = ((out.next_state - params.soc_min_kwh).abs() < 1e-7) | (
        (out.next_state - params.soc_max_kwh).abs() < 1e-7
    )
    assert torch.all(at_bound[cut])


# ----------------------------------------------------------------------------------------------------------
# Heat pump
# ----------------------------------------------------------------------------------------------------------


def test_heatpump_mode_follows_outdoor_temperature_and_consumes_in_both_modes() -> None:
    params = _heatpump()  # band 20-23 C, centre 21.5 C
    # Indoor == outdoor: no envelope flow, so the sign of the change is the sign of q.
    t_in = _t([21.0], [22.0], [21.0], [22.0])
    t_out = _t([21.0], [22.0], [21.0], [22.0])
    out = dev.heatpump_step(params, t_in, _t([0.0], [0.0], [-1.0], [-1.0]), t_out, DT_H)
    assert out.next_state[0, 0] > 21.0  # outdoor below the band centre: heating
    assert out.next_state[1, 0] < 22.0  # above it: cooling
    torch.testing.assert_close(out.next_state[2:], t_in[2:])  # a = -1: off
    # normalised electrical power (1 + a) / 2 in [0, 1], the same in both modes
    torch.testing.assert_close(out.p_kw, _t([1.5], [1.5], [0.0], [0.0]))
    torch.testing.assert_close(out.device_cost, torch.zeros_like(t_in))
    heating = dev.heatpump_heating(params, t_out)
    assert heating[:, 0].tolist() == [True, False, True, False]


def test_heatpump_cold_house_drifts_down_without_heating() -> None:
    params = _heatpump()
    out = dev.heatpump_step(params, _t([21.0]), _t([-1.0]), _t([0.0]), DT_H)
    assert 0.0 < out.next_state[0, 0] < 21.0


def test_heatpump_steady_state_matches_1r1c() -> None:
    params = _heatpump()
    t_out = _t([-3.0])
    a = _t([0.4])  # 70 % of full load
    cop_heat, _ = dev.heatpump_cop(params, t_out)
    q_kw = 0.7 * 3.0 * cop_heat
    t = _t([21.0])
    for _ in range(1000):  # 500 h with R*C = 20 h: residual exp(-25)
        t = dev.heatpump_step(params, t, a, t_out, DT_H).next_state
    torch.testing.assert_close(t, t_out + 4.0 * q_kw)


def test_heatpump_exact_discretisation_against_fine_euler() -> None:
    params = _heatpump()
    t_out = _t([5.0], [30.0])
    a = _t([0.6], [0.2])
    t0 = _t([19.0], [26.0])
    exact = dev.heatpump_step(params, t0, a, t_out, 2.0).next_state
    cop_heat, cop_cool = dev.heatpump_cop(params, t_out)
    u = 0.5 * (1.0 + a)
    q = torch.where(t_out < 21.5, u * 3.0 * cop_heat, -u * 3.0 * cop_cool)
    t = t0.clone()
    n = 20000
    for _ in range(n):
        t = t + (2.0 / n) * (q - (t - t_out) / 4.0) / 5.0
    torch.testing.assert_close(exact, t, atol=1e-3, rtol=0)
    # Two half steps equal one full step (exact integration with q held constant).
    half = dev.heatpump_step(params, t0, a, t_out, 1.0).next_state
    torch.testing.assert_close(dev.heatpump_step(params, half, a, t_out, 1.0).next_state, exact)


def test_heatpump_electricity_is_thermal_over_cop() -> None:
    params = _heatpump()
    t_out = _t([-10.0], [32.0])
    a = _t([0.8], [0.8])
    t_in = _t([20.0], [24.0])
    out = dev.heatpump_step(params, t_in, a, t_out, DT_H)
    cop_heat, cop_cool = dev.heatpump_cop(params, t_out)
    cop = torch.where(t_out < 21.5, cop_heat, cop_cool)
    # the heat moved, from the exact 1R1C solution, over the COP is the electrical input
    decay = torch.exp(_t([-DT_H / 20.0]))
    q_kw = ((out.next_state - t_in * decay) / (1 - decay) - t_out) / 4.0
    torch.testing.assert_close(out.p_kw, q_kw.abs() / cop)
    torch.testing.assert_close(out.p_kw, _t([2.7], [2.7]))


def test_heatpump_sizing_covers_design_loss_with_margin() -> None:
    params = dev.sample_heatpump_params(200, _gen(5), heating_design_c=-9.4, cooling_design_c=32.2, sizing_margin=0.25)
    centre = 0.5 * (params.t_min_c + params.t_max_c)
    cop_heat, _ = dev.heatpump_cop(params, torch.full((1, 200), -9.4, dtype=F64))
    _, cop_cool = dev.heatpump_cop(params, torch.full((1, 200), 32.2, dtype=F64))
    heat_cap, cool_cap = params.p_max_kw * cop_heat[0], params.p_max_kw * cop_cool[0]
    heat_loss, heat_gain = (centre + 9.4) / params.r_k_per_kw, (32.2 - centre) / params.r_k_per_kw
    assert torch.all(heat_cap >= 1.25 * heat_loss * (1 - 1e-12))
    assert torch.all(cool_cap >= 1.25 * heat_gain * (1 - 1e-12))
    # the binding one of the two is met with equality: no unit is larger than the rule asks
    torch.testing.assert_close(
        torch.minimum(heat_cap / heat_loss, cool_cap / heat_gain), torch.full((200,), 1.25, dtype=F64)
    )
    # at full load and the design temperature, a building at the band centre does not cool down
    out = dev.heatpump_step(
        params, centre[None], torch.ones(1, 200, dtype=F64), torch.full((1, 200), -9.4, dtype=F64), DT_H
    )
    assert torch.all(out.next_state > centre)
    with pytest.raises(ValueError, match="margin"):
        dev.sample_heatpump_params(3, _gen(0), sizing_margin=-0.1)


def test_heatpump_cop_monotone_and_clipped() -> None:
    params = dev.sample_heatpump_params(5, _gen(3))
    t_out = torch.linspace(-30.0, 50.0, 161, dtype=F64)[:, None]
    cop_heat, cop_cool = dev.heatpump_cop(params, t_out)
    assert cop_heat.shape == cop_cool.shape == (161, 5)
    # Colder outdoors: lower (never higher) heating COP; hotter: lower cooling COP.
    assert torch.all(cop_heat[1:] >= cop_heat[:-1])
    assert torch.all(cop_cool[1:] <= cop_cool[:-1])
    assert cop_heat[0].max() < cop_heat[-1].min()
    for cop in (cop_heat, cop_cool):
        assert torch.all((cop >= dev.COP_MIN) & (cop <= dev.COP_MAX))
    # A plausible air-source unit: heating COP between 2 and 5 at 7 C, cooling between 2 and 5 at 35 C.
    ch, _ = dev.heatpump_cop(params, torch.tensor([[7.0]], dtype=F64))
    _, cc = dev.heatpump_cop(params, torch.tensor([[35.0]], dtype=F64))
    assert torch.all((ch > 2) & (ch < 5)) and torch.all((cc > 2) & (cc < 5))


def test_heatpump_comfort_violation_in_kelvin() -> None:
    params = _heatpump()
    # Very hot and very cold houses, heat pump off, outdoor equal to indoor: the state does not move.
    t = _t([25.5], [17.0], [21.0])
    out = dev.heatpump_step(params, t, torch.full_like(t, -1.0), t, DT_H)
    torch.testing.assert_close(out.violation, _t([2.5], [3.0], [0.0]))


def test_heatpump_broadcast_outdoor_temperature() -> None:
    params = dev.sample_heatpump_params(4, _gen(1))
    t_in = dev.initial_heatpump_state(params, 3, _gen(2))
    a = torch.rand(3, 4, generator=_gen(4), dtype=F64) * 2 - 1
    t_out_col = _t([-5.0], [10.0], [30.0])
    out_b = dev.heatpump_step(params, t_in, a, t_out_col, DT_H)
    out_full = dev.heatpump_step(params, t_in, a, t_out_col.expand(3, 4).clone(), DT_H)
    for field in dataclasses.fields(dev.DeviceStep):
        x, y = getattr(out_b, field.name), getattr(out_full, field.name)
        assert x.shape == (3, 4)
        torch.testing.assert_close(x, y)


# ----------------------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------------------


def test_generator_action_map_and_limits() -> None:
    params = _generator()
    prev = torch.zeros(3, 1, dtype=F64)
    out = dev.generator_step(params, prev, _t([-1.0], [0.0], [1.0]), DT_H)
    # a = -1: full output (injection), a = +1: off.
    torch.testing.assert_close(out.p_kw, _t([-8.0], [-4.0], [0.0]))
    torch.testing.assert_close(out.next_state, -out.p_kw)
    torch.testing.assert_close(out.violation, torch.zeros_like(prev))
    torch.testing.assert_close(out.device_cost, (0.15 * out.next_state + 0.005 * out.next_state**2) * DT_H)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    dt_h=st.floats(0.05, 2.0),
    prev_frac=st.lists(st.floats(0.0, 1.0), min_size=5, max_size=5),
    action=st.lists(st.floats(-1.0, 1.0), min_size=5, max_size=5),
    ramp_limit=st.booleans(),
)
def test_generator_projection_properties(
    seed: int, dt_h: float, prev_frac: list, action: list, ramp_limit: bool
) -> None:
    params = dev.sample_generator_params(5, _gen(seed), ramp_limit=ramp_limit)
    prev = params.p_min_kw + torch.tensor([prev_frac], dtype=F64) * (params.p_max_kw - params.p_min_kw)
    a = torch.tensor([action], dtype=F64)
    out = dev.generator_step(params, prev, a, dt_h)
    output = out.next_state
    tol = 1e-9
    assert torch.all(output >= params.p_min_kw - tol) and torch.all(output <= params.p_max_kw + tol)
    assert torch.all((output - prev).abs() <= params.ramp_kw_per_h * dt_h + tol)
    torch.testing.assert_close(out.p_kw, -output)
    request = params.p_min_kw + 0.5 * (1 - a) * (params.p_max_kw - params.p_min_kw)
    torch.testing.assert_close(out.violation, (request - output).abs())
    if not ramp_limit:
        torch.testing.assert_close(out.violation, torch.zeros_like(out.violation))


def test_generator_ramp_limit_binds() -> None:
    params = _generator(ramp_kw_per_h=4.0)
    out = dev.generator_step(params, _t([0.0], [8.0]), _t([-1.0], [1.0]), DT_H)
    torch.testing.assert_close(out.next_state, _t([2.0], [6.0]))
    torch.testing.assert_close(out.violation, _t([6.0], [6.0]))


def test_generator_fuel_cost_convex() -> None:
    params = dev.sample_generator_params(7, _gen(5), ramp_limit=False)
    prev = torch.zeros(1, 7, dtype=F64)
    a = torch.linspace(-1.0, 1.0, 41, dtype=F64)
    cost = torch.stack([dev.generator_step(params, prev, x.expand(1, 7), DT_H).device_cost[0] for x in a])
    # The output is affine in a, so cost convex in output <=> second differences in a are non-negative.
    second = cost[2:] - 2 * cost[1:-1] + cost[:-2]
    assert torch.all(second >= -1e-12)
    assert torch.all(second.sum(0) > 0)  # strictly convex: c2 > 0
    assert torch.all(cost >= 0)


# ----------------------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------------------


def _flat_outputs(out: dev.DeviceStep) -> tuple[torch.Tensor, ...]:
    return (out.p_kw, out.next_state, out.device_cost, out.violation)


def test_battery_gradcheck_away_from_kinks() -> None:
    params = dev.sample_battery_params(3, _gen(11))
    mid = 0.5 * (params.soc_min_kwh + params.soc_max_kwh)
    # Row 0: interior requests; row 1: nearly empty and asked to discharge hard (discharge bound binds).
    soc = torch.stack([mid, params.soc_min_kwh + 0.2]).requires_grad_(True)
    a = _t([0.3, -0.5, 0.7], [-0.9, -0.8, -0.95]).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s, x: _flat_outputs(dev.battery_step(params, s, x, DT_H)), (soc, a))


def test_heatpump_gradcheck_away_from_kinks() -> None:
    params = dev.sample_heatpump_params(3, _gen(12))
    t_in = _t([20.0, 21.0, 22.0], [24.0, 25.0, 19.0]).requires_grad_(True)
    a = _t([0.3, -0.5, 0.7], [-0.9, 0.6, 0.2]).requires_grad_(True)
    t_out = _t([-4.0], [31.0]).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda s, x, to: _flat_outputs(dev.heatpump_step(params, s, x, to, DT_H)), (t_in, a, t_out)
    )


def test_generator_gradcheck_away_from_kinks() -> None:
    params = dev.sample_generator_params(3, _gen(13))
    # Row 0: within the ramp window; row 1: the ramp limit binds from prev = 0.
    prev = _t([3.0, 2.5, 2.0], [0.0, 0.0, 0.0]).requires_grad_(True)
    a = _t([0.1, 0.2, 0.0], [-0.9, -0.95, -0.99]).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s, x: _flat_outputs(dev.generator_step(params, s, x, DT_H)), (prev, a))


def test_violation_gradient_pushes_back_into_feasible_set() -> None:
    params = _battery()
    a = _t([-1.0]).requires_grad_(True)
    out = dev.battery_step(params, _t([1.2]), a, DT_H)
    (grad,) = torch.autograd.grad(out.violation.sum(), a)
    assert grad.item() < 0  # less discharge request -> less violation


@pytest.mark.parametrize("name", ["battery", "heatpump", "generator"])
def test_gradients_finite_at_zero_and_bounds(name: str) -> None:
    spec = dev.DEVICE_TYPES[name]
    params = spec.sample_params(3, _gen(21))
    state = spec.initial_state(params, 4, _gen(22))
    if name == "battery":
        state = torch.stack([params.soc_min_kwh, params.soc_max_kwh, state[2], state[3]])
    if name == "heatpump":
        state = torch.stack([params.t_min_c, params.t_max_c, state[2], state[3]])
    state = state.clone().requires_grad_(True)
    a = _t([0.0, 0.0, 0.0], [1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [0.0, 1.0, -1.0]).requires_grad_(True)
    exo = {"t_outdoor_c": _t([-30.0], [35.0], [7.0], [60.0])}  # includes COP-clipped temperatures
    out = spec.step(params, state, a, dt_h=DT_H, **{k: exo[k] for k in spec.exogenous})
    total = sum(x.sum() for x in _flat_outputs(out))
    g_state, g_a = torch.autograd.grad(total, (state, a))
    assert torch.isfinite(g_state).all() and torch.isfinite(g_a).all()
    assert all(torch.isfinite(x).all() for x in _flat_outputs(out))


# ----------------------------------------------------------------------------------------------------------
# Sampling, purity, batching, registry
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ranges"),
    [("battery", dev.BATTERY_RANGES), ("heatpump", dev.HEATPUMP_RANGES), ("generator", dev.GENERATOR_RANGES)],
)
def test_sampled_params_in_ranges_and_reproducible(name: str, ranges: dict) -> None:
    spec = dev.DEVICE_TYPES[name]
    n = 500
    p1 = spec.sample_params(n, _gen(7))
    p2 = spec.sample_params(n, _gen(7))
    p3 = spec.sample_params(n, _gen(8))
    assert isinstance(p1, spec.params_cls)
    for f in dataclasses.fields(p1):
        x = getattr(p1, f.name)
        assert x.shape == (n,) and x.dtype == F64
        torch.testing.assert_close(x, getattr(p2, f.name), rtol=0, atol=0)
    assert not torch.equal(p1.p_max_kw, p3.p_max_kw)
    for key, (low, high) in ranges.items():
        if hasattr(p1, key):
            x = getattr(p1, key)
            assert torch.all((x >= low) & (x <= high)), key
            assert x.max() - x.min() > 0.8 * (high - low), key  # really spread over the range


def test_derived_params_consistent_with_ranges() -> None:
    bat = dev.sample_battery_params(300, _gen(1))
    torch.testing.assert_close(bat.soc_min_kwh, dev.BATTERY_SOC_MIN_FRACTION * bat.e_max_kwh)
    torch.testing.assert_close(bat.soc_max_kwh, dev.BATTERY_SOC_MAX_FRACTION * bat.e_max_kwh)
    hp = dev.sample_heatpump_params(300, _gen(2))
    centre, width = 0.5 * (hp.t_min_c + hp.t_max_c), hp.t_max_c - hp.t_min_c
    lo, hi = dev.HEATPUMP_RANGES["t_comfort_centre_c"]
    assert torch.all((centre >= lo - 1e-12) & (centre <= hi + 1e-12))
    lo, hi = dev.HEATPUMP_RANGES["t_comfort_width_k"]
    assert torch.all((width >= lo - 1e-12) & (width <= hi + 1e-12))
    gen_limited = dev.sample_generator_params(300, _gen(3))
    gen_free = dev.sample_generator_params(300, _gen(3), ramp_limit=False)
    frac = gen_limited.ramp_kw_per_h / gen_limited.p_max_kw
    lo, hi = dev.GENERATOR_RANGES["ramp_fraction_per_h"]
    assert torch.all((frac >= lo - 1e-12) & (frac <= hi + 1e-12))
    assert torch.all(torch.isinf(gen_free.ramp_kw_per_h))
    torch.testing.assert_close(gen_free.p_max_kw, gen_limited.p_max_kw)  # flag changes nothing else
    # GradMAP's generator range: normalised power in [-1, -0.15] by default; 0 keeps an off-able unit
    torch.testing.assert_close(gen_limited.p_min_kw, dev.GENERATOR_MIN_OUTPUT_FRACTION * gen_limited.p_max_kw)
    assert dev.GENERATOR_MIN_OUTPUT_FRACTION == 0.15
    off_able = dev.sample_generator_params(300, _gen(3), min_output_fraction=0.0)
    assert torch.all(off_able.p_min_kw == 0)
    with pytest.raises(ValueError, match="min_output_fraction"):
        dev.sample_generator_params(3, _gen(3), min_output_fraction=1.0)
    # battery sizing rule: capacity = power x storage duration
    duration = bat.e_max_kwh / bat.p_max_kw
    lo, hi = dev.BATTERY_RANGES["duration_h"]
    assert torch.all((duration >= lo - 1e-12) & (duration <= hi + 1e-12))


def test_initial_states() -> None:
    bat = dev.sample_battery_params(50, _gen(1))
    soc = dev.initial_battery_state(bat, 8, _gen(2))
    assert soc.shape == (8, 50)
    assert torch.all((soc >= bat.soc_min_kwh) & (soc <= bat.soc_max_kwh))
    torch.testing.assert_close(soc, dev.initial_battery_state(bat, 8, _gen(2)), rtol=0, atol=0)
    hp = dev.sample_heatpump_params(50, _gen(1))
    t = dev.initial_heatpump_state(hp, 8, _gen(2))
    assert t.shape == (8, 50) and torch.all((t >= hp.t_min_c) & (t <= hp.t_max_c))
    gen = dev.sample_generator_params(50, _gen(1))
    assert torch.equal(dev.initial_generator_state(gen, 8, _gen(2)), gen.p_min_kw.expand(8, 50))


def _random_case(name: str, batch: int, seed: int):
    spec = dev.DEVICE_TYPES[name]
    params = spec.sample_params(5, _gen(seed))
    state = spec.initial_state(params, batch, _gen(seed + 1))
    a = torch.rand(batch, 5, generator=_gen(seed + 2), dtype=F64) * 2 - 1
    exo = {"t_outdoor_c": torch.rand(batch, 1, generator=_gen(seed + 3), dtype=F64) * 40 - 10}
    return spec, params, state, a, {k: exo[k] for k in spec.exogenous}


@pytest.mark.parametrize("name", ["battery", "heatpump", "generator"])
def test_step_does_not_mutate_inputs(name: str) -> None:
    spec, params, state, a, exo = _random_case(name, 4, 30)
    copies = [x.clone() for x in (state, a, *exo.values())]
    param_copies = {f.name: getattr(params, f.name).clone() for f in dataclasses.fields(params)}
    spec.step(params, state, a, dt_h=DT_H, **exo)
    for x, y in zip((state, a, *exo.values()), copies, strict=True):
        assert torch.equal(x, y)
    for key, value in param_copies.items():
        assert torch.equal(getattr(params, key), value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.p_max_kw = params.p_max_kw  # type: ignore[misc]


@pytest.mark.parametrize("name", ["battery", "heatpump", "generator"])
def test_batch_rows_are_independent(name: str) -> None:
    spec, params, state, a, exo = _random_case(name, 6, 40)
    full = spec.step(params, state, a, dt_h=DT_H, **exo)
    for row in (0, 3, 5):
        exo_row = {k: v[row : row + 1] for k, v in exo.items()}
        single = spec.step(params, state[row : row + 1], a[row : row + 1], dt_h=DT_H, **exo_row)
        for f in dataclasses.fields(dev.DeviceStep):
            torch.testing.assert_close(getattr(full, f.name)[row : row + 1], getattr(single, f.name))
    # Changing other rows' actions leaves this row untouched.
    a2 = a.clone()
    a2[1:] = -a2[1:]
    other = spec.step(params, state, a2, dt_h=DT_H, **exo)
    torch.testing.assert_close(other.next_state[0], full.next_state[0])


@pytest.mark.parametrize("name", ["battery", "heatpump", "generator"])
def test_registry_entries_work_in_float32(name: str) -> None:
    spec = dev.DEVICE_TYPES[name]
    params = spec.sample_params(4, _gen(50), dtype=torch.float32)
    state = spec.initial_state(params, 2, _gen(51))
    a = torch.zeros(2, 4, dtype=torch.float32)
    exo = {"t_outdoor_c": torch.zeros(2, 1, dtype=torch.float32)}
    out = spec.step(params, state, a, dt_h=DT_H, **{k: exo[k] for k in spec.exogenous})
    assert isinstance(out, dev.DeviceStep)
    for f in dataclasses.fields(out):
        x = getattr(out, f.name)
        assert x.shape == (2, 4) and x.dtype == torch.float32
        if f.name == "violation":
            assert torch.all(x >= 0)
    assert spec.state_name in {"soc_kwh", "t_indoor_c", "p_prev_kw"}


def test_registry_keys_match_agent_name_types() -> None:
    assert set(dev.DEVICE_TYPES) == {"battery", "heatpump", "generator"}
    assert all("_" not in key for key in dev.DEVICE_TYPES)


# ----------------------------------------------------------------------------------------------------------
# Documentation
# ----------------------------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "devices.md"


def test_docs_range_table_matches_constants() -> None:
    ranges = {
        "battery": dev.BATTERY_RANGES,
        "heatpump": dev.HEATPUMP_RANGES,
        "generator": dev.GENERATOR_RANGES,
    }
    rows = re.findall(
        r"^\| (battery|heatpump|generator) +\| `(\w+)` +\| ([\d.]+) +\| ([\d.]+) +\|", DOCS.read_text(), re.M
    )
    documented = {(kind, key): (float(lo), float(hi)) for kind, key, lo, hi in rows}
    expected = {(kind, key): r for kind, table in ranges.items() for key, r in table.items()}
    assert documented == expected


def test_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    (code,) = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    exec(compile(code, str(DOCS), "exec"), {})
    assert len(capsys.readouterr().out.splitlines()) == 3
