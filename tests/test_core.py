"""The functional core: agents and placement, reset/step contract, determinism, gradients, errors, calibration."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import gridedge_env
from baselines.rules import noop_actions, price_seeking_actions
from gradmap_agent.networks import ObsNormalizer, StackedMLPPolicy, make_policy
from gridedge_env.core import OBS_DIM, OBS_NAMES, SimConfig, State, action_bounds, make_sim
from gridedge_env.devices import DEVICE_TYPES
from gridedge_env.network import load_feeder
from gridedge_env.placement import (
    FULL_SIZE_SPOT_KW_PER_AGENT,
    hosting_capacity,
    node_spot_kw,
    split_mix,
    systematic_counts,
)
from gridedge_env.scenarios import split_days, split_profiles
from gridedge_env.simbench import bench_sim
from gridedge_run.calibration import rollout_metrics

DOCS = Path(__file__).resolve().parents[1] / "docs" / "simulator.md"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these tensors are small, and a second thread only stalls when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sim():
    """The default task: IEEE-123, 1,000 agents."""
    return make_sim()


@pytest.fixture(scope="module")
def small():
    """IEEE-13 with 12 agents (4 of each type), tight power-flow tolerance for finite differences."""
    return make_sim(feeder="ieee13", n_agents=12, mix=(1, 1, 1), seed=3, pf_tol=1e-13, pf_adjoint_tol=1e-13)


def _random_actions(sim, batch: int, steps: int, seed: int = 0, low: float = -1.0, high: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand((steps, batch, sim.n_agents), generator=g, dtype=torch.float64)
    return (low + (high - low) * u).to(sim.dtype)


def _rollout(sim, state, actions, **kw):
    results = []
    for k in range(actions.shape[0]):
        r = sim.step(state, actions[k], **kw)
        state = r.state
        results.append(r)
    return results


# ----------------------------------------------------------------------------------------------------------
# Agents and placement
# ----------------------------------------------------------------------------------------------------------


def test_public_api_exported():
    assert gridedge_env.make_sim is make_sim
    for name in ("Sim", "SimConfig", "State", "StepResult", "OBS_NAMES", "OBS_DIM", "sim_config_dict"):
        assert hasattr(gridedge_env, name)


def test_agent_names_and_groups(sim):
    assert sim.n_agents == len(sim.agents) == 1000
    assert sim.n_per_type == {"battery": 400, "heatpump": 400, "generator": 200}
    assert sim.agents[:2] == ["battery_0", "battery_1"]
    assert sim.agents[400] == "heatpump_0" and sim.agents[800] == "generator_0" and sim.agents[-1] == "generator_199"
    assert len(set(sim.agents)) == 1000
    pattern = re.compile(r"^(battery|heatpump|generator)_\d+$")
    assert all(pattern.match(a) for a in sim.agents)
    assert list(sim.agent_groups) == ["battery", "heatpump", "generator"]
    for name, members in sim.agent_groups.items():
        assert members == sim.agents[sim.agent_slices[name]]
        assert all(a.startswith(name + "_") for a in members)
        assert sim.params[name].n_agents == len(members)
    assert set(sim.agent_node_names) <= set(sim.load_node_names)
    assert set(sim.agent_phase.tolist()) <= {1, 2, 3}
    for name, node, bus, phase in zip(
        sim.agents[:50], sim.agent_node_names, sim.agent_bus, sim.agent_phase.tolist(), strict=False
    ):
        assert node == f"{bus}.{phase}", name


def test_placement_proportional_to_spot_load(sim):
    spot = sim.node_spot_kw.cpu().to(torch.float64)
    assert float(spot.sum()) == pytest.approx(sum(ld.p_kw for ld in sim.compiled.feeder.loads))
    counts = torch.bincount(sim.agent_node.cpu(), minlength=sim.n_load_nodes).to(torch.float64)
    expected = sim.n_agents * spot / spot.sum()
    assert torch.all(counts >= torch.floor(expected)) and torch.all(counts <= torch.ceil(expected))
    assert int(counts.sum()) == sim.n_agents
    # each type is spread over the feeder too: its share of agents per phase follows the phase's spot load
    phase_kw = torch.zeros(4, dtype=torch.float64)
    for j, name in enumerate(sim.load_node_names):
        phase_kw[int(name.rsplit(".", 1)[1])] += spot[j]
    for members in sim.agent_slices.values():
        share = torch.bincount(sim.agent_phase[members].cpu(), minlength=4).to(torch.float64)
        share = share / share.sum()
        assert torch.allclose(share[1:], (phase_kw / phase_kw.sum())[1:], atol=0.08)


def test_placement_seeded():
    a, b, c = (make_sim(feeder="ieee34", n_agents=50, seed=s) for s in (1, 1, 2))
    assert a.agent_node_names == b.agent_node_names
    assert torch.equal(a.params["battery"].p_max_kw, b.params["battery"].p_max_kw)
    assert a.agent_node_names != c.agent_node_names


def test_systematic_counts():
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([0.0, 1.0, 2.5, 0.5, 6.0])
    for n in (0, 1, 7, 100, 1001):
        counts = systematic_counts(w, n, g)
        assert int(counts.sum()) == n
        exact = n * w / w.sum()
        assert torch.all(counts >= torch.floor(exact)) and torch.all(counts <= torch.ceil(exact))
        assert counts[0] == 0


def test_split_mix():
    assert split_mix(1000, (0.4, 0.4, 0.2), "abc") == {"a": 400, "b": 400, "c": 200}
    assert split_mix(1, (0.4, 0.4, 0.2), "abc") == {"a": 1, "b": 0, "c": 0}
    assert sum(split_mix(7, (1, 1, 1), "abc").values()) == 7
    with pytest.raises(ValueError, match="mix"):
        split_mix(10, (1, -1, 1), "abc")
    with pytest.raises(ValueError, match="mix"):
        split_mix(10, (1, 1), "abc")


def test_any_shipped_feeder_and_small_counts():
    for feeder in ("ieee13", "ieee34"):
        s = make_sim(feeder=feeder, n_agents=1)
        assert s.agents == ["battery_0"]
        state = s.reset(2, seed=0)
        r = s.step(state, torch.zeros(2, 1))
        assert r.cost.shape == (2, 1) and bool(r.converged.all())
    s = make_sim(feeder="ieee13", n_agents=5, mix=(0, 0, 1))
    assert s.agent_groups == {"battery": [], "heatpump": [], "generator": [f"generator_{i}" for i in range(5)]}
    r = s.step(s.reset(1), torch.full((1, 5), -1.0))
    assert r.p_kw.shape == (1, 5) and bool((r.p_kw <= 0).all())


def test_hosting_rule(small):
    spot_kw = float(node_spot_kw(small.compiled).sum())
    cap = hosting_capacity(spot_kw, 1.0)
    assert small.hosting_capacity == cap == math.floor(spot_kw)
    assert make_sim(feeder="ieee13", n_agents=cap).n_agents == cap
    with pytest.raises(ValueError, match="host"):
        make_sim(feeder="ieee13", n_agents=cap + 1)
    with pytest.raises(ValueError, match="host"):
        make_sim(n_agents=10**6)
    assert make_sim(feeder="ieee13", n_agents=10, min_spot_kw_per_agent=300.0).hosting_capacity == cap // 300


def test_devices_shrink_where_agents_are_denser_than_one_per_3_kw():
    """The shipped tasks (about 3.5 kW of spot load per agent) keep the drawn device sizes; denser agents get
    devices scaled by their spot load per agent over 3 kW, which behave the same under normalised actions."""
    assert make_sim(n_agents=1000).device_scale == 1.0  # IEEE-123 task
    assert make_sim(feeder="ieee13", n_agents=1000).device_scale == 1.0  # IEEE-13 quick task
    full = make_sim(feeder="ieee13", n_agents=1000, seed=4)
    total_kw = float(full.node_spot_kw.sum())
    dense = make_sim(feeder="ieee13", n_agents=3000, seed=4)
    scale = total_kw / 3000 / FULL_SIZE_SPOT_KW_PER_AGENT
    assert dense.device_scale == pytest.approx(scale) and scale < 0.4
    assert float(dense.params["battery"].p_max_kw.max()) <= 7 * scale + 1e-12
    assert float(dense.params["generator"].p_max_kw.min()) >= 3 * scale - 1e-12
    # a scaled device under the same actions: the same normalised trajectory, power and cost times the scale
    g = torch.Generator().manual_seed(0)
    actions = 2 * torch.rand(3, 5, generator=g, dtype=torch.float64) - 1
    t_out = torch.full((3, 1), -5.0, dtype=torch.float64)
    for name, spec in DEVICE_TYPES.items():
        params = spec.sample_params(5, torch.Generator().manual_seed(1))
        small = params.scaled(0.25)
        state = spec.initial_state(params, 3, torch.Generator().manual_seed(2))
        small_state = state if name == "heatpump" else 0.25 * state
        kwargs = {"t_outdoor_c": t_out} if spec.exogenous else {}
        big_out = spec.step(params, state, actions, dt_h=0.5, **kwargs)
        small_out = spec.step(small, small_state, actions, dt_h=0.5, **kwargs)
        assert torch.allclose(small_out.p_kw, 0.25 * big_out.p_kw, atol=1e-12), name
        assert torch.allclose(small_out.device_cost, 0.25 * big_out.device_cost, atol=1e-12), name
        expected_state = big_out.next_state if name == "heatpump" else 0.25 * big_out.next_state
        assert torch.allclose(small_out.next_state, expected_state, atol=1e-12), name


def test_feeder_calibration_by_name():
    """load_scale and pv_kwp_per_kw default to the feeder's calibration (IEEE-8500 its own, by name), and
    sim.config records the numbers used; values given win."""
    s123 = make_sim(n_agents=10)
    assert (s123.config.load_scale, s123.config.pv_kwp_per_kw) == (2.5, 3.5)
    as_8500 = dataclasses.replace(load_feeder("ieee13"), name="ieee8500")
    s = make_sim(feeder=as_8500, n_agents=10)
    assert (s.config.load_scale, s.config.pv_kwp_per_kw) == (1.0, 0.5)
    assert make_sim(feeder=as_8500, n_agents=10, load_scale=2.0).config.load_scale == 2.0
    assert torch.allclose(s.node_pv_kwp, 0.5 * s.node_spot_kw)


@pytest.mark.slow
def test_ieee8500_hosts_10000_agents_on_the_service_secondaries():
    """10,000 agents on IEEE-8500 sit on the 120 V legs of the homes' service transformers (the load nodes),
    in proportion to spot load, and one step with its gradient solves every row."""
    s = make_sim(feeder="ieee8500", n_agents=10_000)
    assert s.hosting_capacity == 10_773 and s.n_load_nodes == 2_354
    feeder = s.compiled.feeder
    home_buses = {ld.terminal.bus for ld in feeder.loads}
    assert set(s.agent_bus) <= home_buses and set(s.agent_phase.tolist()) == {1, 2}
    assert all(feeder.bus(bus).kv_base_ln < 0.2 for bus in home_buses)  # 120 V secondaries
    counts = torch.bincount(s.agent_node, minlength=s.n_load_nodes).to(torch.float64)
    expected = 10_000 * s.node_spot_kw / s.node_spot_kw.sum()
    assert torch.all(counts >= torch.floor(expected)) and torch.all(counts <= torch.ceil(expected))
    state = s.reset(2, seed=0)
    actions = torch.zeros(2, 10_000, dtype=torch.float64, requires_grad=True)
    r = s.step(state, actions)
    assert bool(r.converged.all())
    (r.cost.sum() + 1e3 * r.voltage_violation.sum()).backward()
    assert bool(torch.isfinite(actions.grad).all())
    # the task is sized to the feeder: devices at 1.08 kW of spot load per agent, IEEE-8500's own load and PV
    # calibration; a day of idle-ish (zero) and of random actions stays within 0.9-1.1 pu at every node
    assert s.device_scale == pytest.approx(10_773.17 / 10_000 / 3.0, rel=1e-4)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for random in (False, True):
            state = s.reset(2, seed=1, split="test")
            for _ in range(s.n_steps):
                a = 2 * torch.rand(2, 10_000, generator=g, dtype=torch.float64) - 1 if random else actions.detach()
                r = s.step(state, a)
                state = r.state
                assert bool(r.converged.all())
                assert 0.9 < float(r.v_mag_pu.min()) and float(r.v_mag_pu.max()) < 1.1


# ----------------------------------------------------------------------------------------------------------
# Reset and step
# ----------------------------------------------------------------------------------------------------------


def test_reset_and_step_shapes(sim):
    state = sim.reset(3, seed=5, split="test")
    b, n, t = 3, sim.n_agents, sim.n_steps
    assert isinstance(state, State) and state.t == 0 and t == 48
    assert state.obs.shape == (b, n, OBS_DIM) and len(OBS_NAMES) == OBS_DIM
    assert state.load_p_kw.shape == (b, t, sim.compiled.n_loads)
    assert state.pv_kw.shape == (b, t, sim.n_load_nodes)
    assert torch.isfinite(state.obs).all()
    r = sim.step(state, torch.zeros(b, n))
    assert r.state.t == 1 and not r.truncated
    for name in ("cost", "electricity_cost", "device_cost", "device_violation", "p_kw", "action"):
        assert getattr(r, name).shape == (b, n), name
    assert r.voltage_violation.shape == r.v_mag_pu.shape == (b, sim.n_nodes)
    assert r.converged.dtype == torch.bool and r.converged.shape == (b,)
    assert r.iterations.shape == (b,)
    assert r.obs is r.state.obs
    assert torch.allclose(r.cost, r.electricity_cost + r.device_cost)
    assert bool((r.device_violation >= 0).all()) and bool((r.voltage_violation >= 0).all())
    by_type = sim.obs_by_type(r.obs)
    assert {k: v.shape[1] for k, v in by_type.items()} == sim.n_per_type


def test_state_is_immutable_and_untouched(sim):
    state = sim.reset(2, seed=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.t = 3  # type: ignore[misc]
    before = {
        f.name: getattr(state, f.name).clone()
        for f in dataclasses.fields(state)
        if isinstance(getattr(state, f.name), torch.Tensor)
    }
    sim.step(state, _random_actions(sim, 2, 1)[0])
    for name, value in before.items():
        assert torch.equal(getattr(state, name), value), name
    assert state.t == 0


def test_episode_truncates_after_one_day(small):
    state = small.reset(2, seed=0)
    results = _rollout(small, state, torch.zeros(small.n_steps, 2, small.n_agents))
    assert [r.truncated for r in results] == [False] * (small.n_steps - 1) + [True]
    with pytest.raises(ValueError, match="episode is over"):
        small.step(results[-1].state, torch.zeros(2, small.n_agents))


def test_determinism_two_instances(sim):
    other = make_sim()
    actions = _random_actions(sim, 2, 48, seed=11)
    a = _rollout(sim, sim.reset(2, seed=4, split="train"), actions)
    b = _rollout(other, other.reset(2, seed=4, split="train"), actions)
    for ra, rb in zip(a, b, strict=True):
        for name in ("cost", "device_violation", "voltage_violation", "v_mag_pu", "obs", "iterations"):
            assert torch.equal(getattr(ra, name), getattr(rb, name)), name
    # a different reset seed draws different days/loads
    c = other.reset(2, seed=5, split="train")
    assert not torch.equal(c.load_p_kw, a[0].state.load_p_kw)


def test_step_is_deterministic_given_state(small):
    state = small.reset(3, seed=2)
    actions = _random_actions(small, 3, 1)[0]
    r1, r2 = small.step(state, actions), small.step(state, actions)
    assert torch.equal(r1.v_mag_pu, r2.v_mag_pu) and torch.equal(r1.obs, r2.obs)


def test_batch_independence(sim):
    state = sim.reset(4, seed=9, split="test")
    actions = _random_actions(sim, 4, 6, seed=2)
    full = _rollout(sim, state, actions)
    for row in (0, 3):
        alone = _rollout(sim, state.select([row]), actions[:, row : row + 1])
        for rf, ra in zip(full, alone, strict=True):
            for name in ("cost", "device_violation", "voltage_violation", "obs"):
                assert torch.allclose(getattr(rf, name)[row : row + 1], getattr(ra, name), rtol=1e-10, atol=1e-12)


def test_train_and_test_days_disjoint_in_reset(sim):
    test = set(split_days("test").tolist())
    train = sim.reset(512, seed=0, split="train")
    assert not set(train.day_idx.tolist()) & test
    drawn = sim.reset(256, seed=1, split="test")
    assert set(drawn.day_idx.tolist()) <= test
    assert len(set(drawn.day_idx.tolist())) > 50
    explicit = sim.reset(None, split="test", days=split_days("test"))
    assert explicit.day_idx.tolist() == sorted(test)
    with pytest.raises(ValueError, match="not a 'train' day"):
        sim.reset(None, split="train", days=[28])


def test_reset_draws_households_from_the_split_profiles():
    one = make_sim(feeder="ieee13", n_agents=6, households_per_load=1)
    data = one.data
    for split in ("train", "test"):
        state = one.reset(64, seed=5, split=split)
        shape = state.load_p_kw / (one.compiled.load_p_kw * one.config.load_scale)  # [B, T, L]: shape x scale
        unscaled = (shape / shape.amax(dim=1, keepdim=True)).permute(0, 2, 1).reshape(-1, one.n_steps)
        match = (unscaled[:, None, :] - data.household_shape[None]).abs().amax(dim=-1)  # [rows, P]
        assert float(match.amin(dim=1).max()) < 1e-9
        used = set(match.argmin(dim=1).tolist())
        assert used <= set(split_profiles(split, data.n_profiles).tolist())


def test_reset_can_draw_another_splits_households():
    sim = make_sim(feeder="ieee13", n_agents=6)
    days = [28, 66]
    own = sim.reset(None, seed=3, split="test", days=days)
    every = sim.reset(None, seed=3, split="test", days=days, households="all")
    # the same draws as the "all" split on the same days: only the profile pool changed
    assert torch.equal(every.load_p_kw, sim.reset(None, seed=3, split="all", days=days).load_p_kw)
    assert not torch.equal(every.load_p_kw, own.load_p_kw)
    assert torch.equal(every.t_outdoor_c, own.t_outdoor_c)  # the days' weather stays
    assert torch.equal(sim.reset(None, seed=3, split="test", days=days, households="test").load_p_kw, own.load_p_kw)
    with pytest.raises(ValueError, match="unknown split 'weekend'"):
        sim.reset(None, seed=3, split="test", days=days, households="weekend")


def test_exogenous_series_follow_the_scenarios(small):
    state = small.reset(None, seed=0, split="test", days=[203, 63])
    data = small.data
    assert torch.equal(state.price_per_kwh, data.price_per_kwh[[203, 63]])
    assert torch.equal(state.t_outdoor_c, data.temperature_c[[203, 63]])
    pv = data.pv_kw_per_kwp[[203, 63]][:, :, None] * small.node_pv_kwp
    assert torch.allclose(state.pv_kw, pv)
    assert torch.allclose(small.node_pv_kwp, small.config.pv_kwp_per_kw * small.node_spot_kw)
    # household load: spot load x load_scale x a shape with peak <= 1 (before the lognormal scale)
    ratio = state.load_p_kw / (small.compiled.load_p_kw * small.config.load_scale)
    assert bool((ratio > 0).all()) and float(ratio.max()) < 2.5


# ----------------------------------------------------------------------------------------------------------
# Actions: clipping and errors
# ----------------------------------------------------------------------------------------------------------


def test_actions_outside_are_clipped(small):
    state = small.reset(2, seed=0)
    big = torch.tensor([[5.0, -3.0] * 6, [-7.0, 1.5] * 6], dtype=torch.float64)
    r_big, r_clip = small.step(state, big), small.step(state, big.clamp(-1, 1))
    assert torch.equal(r_big.action, big.clamp(-1, 1))
    assert torch.equal(r_big.v_mag_pu, r_clip.v_mag_pu) and torch.equal(r_big.cost, r_clip.cost)
    a = big.clone().requires_grad_(True)
    small.step(state, a).cost.sum().backward()
    assert torch.equal(a.grad, torch.zeros_like(a.grad))  # beyond the bound the gradient is zero


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(2, 11), "shape"),
        (torch.zeros(3, 12), "shape"),
        (torch.zeros(12), "shape"),
        (torch.full((2, 12), float("nan")), "NaN or infinite"),
        (torch.tensor([[0.0] * 11 + [float("inf")]] * 2), "NaN or infinite"),
        (torch.tensor([[0.0] * 11 + [float("-inf")]] * 2), "NaN or infinite"),
        ("abc", "numeric"),
    ],
)
def test_bad_actions(small, bad, match):
    state = small.reset(2, seed=0)
    before = state.soc_kwh.clone()
    with pytest.raises(ValueError, match=match):
        small.step(state, bad)
    assert torch.equal(state.soc_kwh, before) and state.t == 0


def test_nan_error_names_the_agent(small):
    state = small.reset(1, seed=0)
    a = torch.zeros(1, 12)
    a[0, 5] = float("nan")
    with pytest.raises(ValueError, match="heatpump_1"):
        small.step(state, a)


def test_numpy_actions_accepted(small):
    state = small.reset(2, seed=0)
    r = small.step(state, np.zeros((2, 12), dtype=np.float32))
    assert r.action.dtype == small.dtype


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_agents": 0}, "n_agents must be >= 1"),
        ({"n_agents": -5}, "n_agents must be >= 1"),
        ({"n_agents": 2.5}, "n_agents must be an integer"),
        ({"n_agents": 10**6}, "more than feeder"),
        ({"mix": (0, 0, 0)}, "mix"),
        ({"mix": (1, 1)}, "mix"),
        ({"step_minutes": 7}, "step_minutes"),
        ({"feeder": "ieee999"}, "ieee999"),
        ({"dtype": torch.float16}, "dtype"),
        ({"load_scale": float("nan")}, "load_scale"),
        ({"households_per_load": 0}, "households_per_load"),
        ({"regulator_taps": "auto"}, "regulator_taps"),
        ({"bogus_option": 1}, "unknown simulator option"),
    ],
)
def test_impossible_configurations(kwargs, match):
    cfg = {"feeder": "ieee13", "n_agents": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_sim(**cfg)


def test_bad_reset_arguments(small):
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        small.reset(2, split="valid")
    with pytest.raises(ValueError, match="batch_size"):
        small.reset(0)
    with pytest.raises(ValueError, match="disagrees"):
        small.reset(3, split="test", days=[28, 63])


def test_config_is_a_frozen_dataclass_with_docs():
    cfg = SimConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_agents = 3  # type: ignore[misc]
    source = Path(gridedge_env.core.__file__).read_text()
    for f in dataclasses.fields(SimConfig):
        assert re.search(rf"    {f.name}: .*\n    \"\"\".+\"\"\"", source), f"SimConfig.{f.name} lacks a one-line doc"


# ----------------------------------------------------------------------------------------------------------
# Physics through the core
# ----------------------------------------------------------------------------------------------------------


def test_battery_energy_balance_through_core(sim):
    state = sim.reset(3, seed=2)
    actions = _random_actions(sim, 3, 48, seed=5, low=-1.5, high=1.5)
    results = _rollout(sim, state, actions)
    sl = sim.agent_slices["battery"]
    p = sim.params["battery"]
    p_kw = torch.stack([r.p_kw[:, sl] for r in results])  # [T, B, Nb]
    stored = sim.dt_h * (p.eta_charge * p_kw.clamp(min=0) - p_kw.clamp(max=0).neg() / p.eta_discharge).sum(0)
    soc_end = results[-1].state.soc_kwh
    assert torch.allclose(soc_end - state.soc_kwh, stored, atol=1e-9)
    socs = torch.stack([r.state.soc_kwh for r in results])
    assert bool((socs >= p.soc_min_kwh - 1e-9).all()) and bool((socs <= p.soc_max_kwh + 1e-9).all())
    assert bool((p_kw.abs() <= p.p_max_kw + 1e-12).all())
    # what was requested but not delivered is the violation
    req = torch.stack([r.action[:, sl] for r in results]) * p.p_max_kw
    viol = torch.stack([r.device_violation[:, sl] for r in results])
    assert torch.allclose(viol, (req - p_kw).abs())


def test_costs_and_net_metering(small):
    state = small.reset(2, seed=3, split="test")
    actions = _random_actions(small, 2, 1, seed=1)[0]
    r = small.step(state, actions)
    energy = r.p_kw * small.dt_h
    assert torch.allclose(r.electricity_cost, state.price_per_kwh[:, :1] * energy)
    other = make_sim(feeder="ieee13", n_agents=12, mix=(1, 1, 1), seed=3, net_metering=False)
    r2 = other.step(other.reset(2, seed=3, split="test"), actions)
    price, export = state.price_per_kwh[:, :1], state.export_price_per_kwh[:, :1]
    expected = price * energy.clamp(min=0) + export * energy.clamp(max=0)
    assert torch.allclose(r2.electricity_cost, expected)
    assert torch.equal(r.device_cost[:, small.agent_slices["heatpump"]], torch.zeros(2, 4, dtype=small.dtype))


def test_voltage_violation_definition(sim):
    state = sim.reset(2, seed=0, split="test")
    r = sim.step(state, torch.ones(2, sim.n_agents))
    v = r.v_mag_pu
    assert torch.allclose(r.voltage_violation, torch.relu(v - 1.05) + torch.relu(0.95 - v))
    assert bool(r.converged.all())


def test_observation_spec(sim):
    state = sim.reset(2, seed=0, split="test", days=None)
    actions = _random_actions(sim, 2, 3, seed=4)
    results = _rollout(sim, state, actions)
    r, prev = results[-1], results[-2]
    obs, t, s = r.obs, r.state.t, r.state
    assert t == 3
    assert torch.allclose(obs[..., OBS_NAMES.index("time_sin")], torch.tensor(math.sin(2 * math.pi * 3 / 48)).double())
    assert torch.allclose(obs[..., OBS_NAMES.index("time_cos")], torch.tensor(math.cos(2 * math.pi * 3 / 48)).double())
    assert torch.allclose(obs[..., OBS_NAMES.index("price")], s.price_per_kwh[:, 3:4].expand(-1, sim.n_agents) / 0.4)
    assert torch.allclose(obs[..., OBS_NAMES.index("t_outdoor")], s.t_outdoor_c[:, 3:4].expand(-1, sim.n_agents) / 20)
    node_v = r.v_mag_pu[:, [sim.node_names.index(nm) for nm in sim.agent_node_names]]
    assert torch.allclose(obs[..., OBS_NAMES.index("v_node")], (node_v - 1.0) / 0.05)
    pv_node = s.pv_kw[:, 3][:, sim.agent_node] / sim.node_spot_kw[sim.agent_node]
    assert torch.allclose(obs[..., OBS_NAMES.index("node_pv")], pv_node)
    own = obs[..., OBS_NAMES.index("own_state")]
    pb = sim.params["battery"]
    assert torch.allclose(
        own[:, sim.agent_slices["battery"]], (s.soc_kwh - pb.soc_min_kwh) / (pb.soc_max_kwh - pb.soc_min_kwh)
    )
    assert torch.allclose(own[:, sim.agent_slices["generator"]], s.p_prev_kw / sim.params["generator"].p_max_kw)
    assert bool((own[:, sim.agent_slices["battery"]] >= -1e-9).all())
    # node load is the household load on the agent's node, per kW of the node's spot load
    load = obs[..., OBS_NAMES.index("node_load")]
    assert bool((load > 0).all()) and float(load.max()) < 3 * sim.config.load_scale
    assert prev.state.t == 2


def test_observation_carries_the_terminal_reference(sim):
    """Every battery and heat pump sees the terminal condition's reference (its initial state on the own-state
    scale) at every step, not only at reset; generators, which have no terminal condition, see 0."""
    state = sim.reset(2, seed=3, split="test")
    actions = _random_actions(sim, 2, 4, seed=5)
    ref_at_reset = state.obs[..., OBS_NAMES.index("own_reference")]
    own_at_reset = state.obs[..., OBS_NAMES.index("own_state")]
    assert torch.equal(
        ref_at_reset[:, : sim.agent_slices["heatpump"].stop], own_at_reset[:, : sim.agent_slices["heatpump"].stop]
    )
    r = _rollout(sim, state, actions)[-1]
    ref = r.obs[..., OBS_NAMES.index("own_reference")]
    assert torch.equal(ref, ref_at_reset)
    pb, ph = sim.params["battery"], sim.params["heatpump"]
    soc_share = (r.state.soc_init_kwh - pb.soc_min_kwh) / (pb.soc_max_kwh - pb.soc_min_kwh)
    assert torch.allclose(ref[:, sim.agent_slices["battery"]], soc_share)
    band = (r.state.t_indoor_init_c - 0.5 * (ph.t_min_c + ph.t_max_c)) / (0.5 * (ph.t_max_c - ph.t_min_c))
    assert torch.allclose(ref[:, sim.agent_slices["heatpump"]], band)
    assert bool((ref[:, sim.agent_slices["generator"]] == 0).all())
    # the state has moved, so the reference is not just the present state again
    own = r.obs[..., OBS_NAMES.index("own_state")]
    assert not torch.allclose(own[:, sim.agent_slices["battery"]], ref[:, sim.agent_slices["battery"]])


def test_observation_carries_the_builtin_controllers_action(sim):
    """``rule_action`` is doing nothing's action at every step (batteries 0, generators +1, heat pumps their
    thermostat), a function of the state and so differentiable through it, and a policy whose network outputs 0
    acts exactly like doing nothing."""
    state = sim.reset(2, seed=3, split="test")
    rule = OBS_NAMES.index("rule_action")
    for t in range(4):
        expected = noop_actions(sim, state)
        assert torch.equal(state.obs[..., rule], expected)
        assert bool((expected[:, sim.agent_slices["battery"]] == 0).all())
        assert bool((expected[:, sim.agent_slices["generator"]] == 1).all())
        hp = expected[:, sim.agent_slices["heatpump"]]
        assert bool((hp >= -1).all() and (hp <= 1).all()) and float(hp.std()) > 0
        state = sim.step(state, _random_actions(sim, 2, 1, seed=t)[0]).state
    # the thermostat reacts to the indoor temperature it observes
    warmer = dataclasses.replace(state, t_indoor_c=state.t_indoor_c + 0.5)
    assert not torch.equal(sim.observe(warmer)[..., rule], state.obs[..., rule])
    # an untrained network with zero output is doing nothing, asked only for what the device can do (after the
    # random steps some generators cannot ramp down to their minimum in one step: the same power either way)
    policy = StackedMLPPolicy(sim.n_agents, OBS_DIM, hidden=4, dtype=sim.dtype)
    with torch.no_grad():
        policy.weights[-1].zero_()
        policy.biases[-1][..., 0] = 0.0
    params = {"policy": policy.state_dict(), "normalizer": ObsNormalizer(sim.n_agents, OBS_DIM).state_dict()}
    low, high = action_bounds(sim, state)
    inside = torch.minimum(torch.maximum(noop_actions(sim, state), low), high)
    assert not torch.equal(inside, noop_actions(sim, state))
    torch.testing.assert_close(make_policy(params)(state.obs), inside, rtol=0, atol=1e-12)
    torch.testing.assert_close(sim.step(state, inside).p_kw, sim.step(state, noop_actions(sim, state)).p_kw)


def test_actions_inside_the_observed_bounds_violate_no_device_constraint(sim):
    """A day of actions drawn inside ``action_low`` / ``action_high`` (uniformly, and at either bound) has no
    projected kW, no heat-pump comfort violation where the unit can keep the band, and no battery terminal
    shortfall; an action outside the bounds is still accepted (projected or scored)."""
    low_i, high_i = OBS_NAMES.index("action_low"), OBS_NAMES.index("action_high")
    bat, hp = sim.agent_slices["battery"], sim.agent_slices["heatpump"]
    for mode in ("uniform", "high", "low"):
        state = sim.reset(3, seed=5, split="validation")
        g = torch.Generator().manual_seed(1)
        for _ in range(sim.n_steps):
            low, high = state.obs[..., low_i], state.obs[..., high_i]
            torch.testing.assert_close((low, high), action_bounds(sim, state), rtol=0, atol=0)
            assert bool((low >= -1).all() and (high <= 1).all() and (low <= high).all())
            u = {"uniform": torch.rand(low.shape, generator=g, dtype=sim.dtype), "low": 0.0, "high": 1.0}[mode]
            result = sim.step(state, low + (high - low) * u)
            assert float(result.device_violation[:, bat].max()) < 1e-9
            assert float(result.device_violation[:, sim.agent_slices["generator"]].max()) < 1e-9
            # a heat pump whose unit can keep the band (bounds apart) stays inside it
            keeps = (high - low)[:, hp] > 1e-9
            assert float(torch.where(keeps, result.device_violation[:, hp], 0.0).max()) < 1e-9
            state = result.state
        assert float(result.terminal_shortfall[:, bat].max()) < 1e-9
    # the deepest discharge all day (mode "low") ends exactly at the initial state of charge
    torch.testing.assert_close(state.soc_kwh, state.soc_init_kwh, rtol=0, atol=1e-9)
    # above the bound: accepted, projected, and scored as undelivered (the day's last step again)
    state = dataclasses.replace(state, t=sim.n_steps - 1)
    state = dataclasses.replace(state, obs=sim.observe(state))
    full_charge = sim.step(state, torch.ones(3, sim.n_agents, dtype=sim.dtype))
    capped = state.obs[:, bat, high_i] < 1.0 - 1e-6
    assert bool(capped.any()) and bool((full_charge.device_violation[:, bat][capped] > 0).all())


# ----------------------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------------------


def _objective(sim, state, actions, w_device=3.0, w_voltage=200.0):
    total = actions.new_zeros(())
    for k in range(actions.shape[0]):
        r = sim.step(state, actions[k])
        state = r.state
        obs_term = r.obs[..., OBS_NAMES.index("v_node")].sum() * 0.01  # observations are differentiable too
        total = total + r.cost.sum() + w_device * r.device_violation.sum() + w_voltage * r.voltage_violation.sum()
        total = total + obs_term
    return total


def test_gradient_matches_finite_differences(small):
    torch.manual_seed(0)
    state = small.reset(2, seed=1, split="test", days=[203, 343])
    state = dataclasses.replace(state, t=22)  # midday: PV and voltages away from trivial
    steps = 4
    actions = _random_actions(small, 2, steps, seed=3, low=-0.9, high=0.9)
    actions = torch.where(actions.abs() < 0.05, torch.full_like(actions, 0.3), actions)  # heat-pump kink at 0
    a = actions.clone().requires_grad_(True)
    total = _objective(small, state, a)
    total.backward()
    grad = a.grad
    assert torch.isfinite(grad).all()
    g = torch.Generator().manual_seed(7)
    picks = [tuple(int(torch.randint(s, (1,), generator=g)) for s in actions.shape) for _ in range(12)]
    eps = 1e-6
    for idx in picks:
        up, dn = actions.clone(), actions.clone()
        up[idx] += eps
        dn[idx] -= eps
        with torch.no_grad():
            fd = (_objective(small, state, up) - _objective(small, state, dn)) / (2 * eps)
        assert float(grad[idx]) == pytest.approx(float(fd), rel=1e-4, abs=1e-6), idx


def test_gradient_reaches_every_action_of_a_full_rollout(sim):
    state = sim.reset(2, seed=0, split="test")
    actions = _random_actions(sim, 2, 48, seed=1, low=-0.95, high=0.95).requires_grad_(True)
    total = _objective(sim, state, actions)
    total.backward()
    grad = actions.grad
    assert grad.shape == (48, 2, 1000) and bool(torch.isfinite(grad).all())
    assert float((grad != 0).to(torch.float64).mean()) > 0.99


def test_detach_state_cuts_gradient_between_steps(small):
    state = small.reset(1, seed=0)
    a0 = torch.full((1, 12), 0.5, dtype=torch.float64, requires_grad=True)
    a1 = torch.full((1, 12), 0.5, dtype=torch.float64)
    r0 = small.step(state, a0, detach_state=True)
    later = small.step(r0.state, a1)
    # the next step's cost and observation (device states) depend on a0 only through the state
    outputs = lambda r: r.cost.sum() + r.obs.sum()  # noqa: E731
    assert not _depends_on(outputs(later), a0)
    assert r0.cost.requires_grad  # this step's own outputs keep their gradient
    r0b = small.step(state, a0)
    assert _depends_on(outputs(small.step(r0b.state, a1)), a0)
    assert not _depends_on(outputs(small.step(small.detach(r0b.state), a1)), a0)


def _depends_on(output: torch.Tensor, leaf: torch.Tensor) -> bool:
    if not output.requires_grad:
        return False
    (g,) = torch.autograd.grad(output, leaf, allow_unused=True, retain_graph=True)
    return g is not None and bool((g != 0).any())


def test_float32(small):
    s32 = make_sim(feeder="ieee13", n_agents=12, mix=(1, 1, 1), seed=3, dtype=torch.float32)
    s64 = make_sim(feeder="ieee13", n_agents=12, mix=(1, 1, 1), seed=3)
    a = _random_actions(s64, 2, 4, seed=0)
    r32 = _rollout(s32, s32.reset(2, seed=0), a.float())
    r64 = _rollout(s64, s64.reset(2, seed=0), a)
    assert r32[-1].v_mag_pu.dtype == torch.float32
    assert all(bool(r.converged.all()) for r in r32)
    assert torch.allclose(r32[-1].v_mag_pu.double(), r64[-1].v_mag_pu, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# The price-seeking rule (baselines.rules) and the calibration of the task (gridedge_run.calibration)
# ----------------------------------------------------------------------------------------------------------


def test_price_seeking_rule(sim):
    state = sim.reset(2, seed=0, split="test", days=[28, 203])
    results, actions = [], []
    for _ in range(48):
        a = price_seeking_actions(sim, state)
        assert a.shape == (2, sim.n_agents) and bool((a.abs() <= 1).all())
        r = sim.step(state, a)
        actions.append(a)
        results.append(r)
        state = r.state
    acts = torch.stack(actions)
    price = state.price_per_kwh
    cheap = (price == price.amin(1, keepdim=True)).T  # [T, B]
    dear = (price == price.amax(1, keepdim=True)).T
    bat = acts[:, :, sim.agent_slices["battery"]]
    gen = acts[:, :, sim.agent_slices["generator"]]
    assert bool((bat[cheap] >= 0).all()) and bool((bat[dear] <= 0).all())
    assert bool((bat[~cheap & ~dear] == 0).all())
    assert bool((gen[:32] == 1).all())  # at the minimum (and starting from it) before the 16:00 peak
    out = torch.stack([r.state.p_prev_kw for r in results])  # generator output, kW
    assert bool((out[1:][dear[1:]] >= out[:-1][dear[1:]] - 1e-12).all())  # ramping up into the peak
    assert bool((out[1:][~dear[1:]] <= out[:-1][~dear[1:]] + 1e-12).all())  # and down after it
    # the rule asks only for what the devices can deliver
    dv = torch.stack([r.device_violation for r in results])
    assert float(dv[:, :, sim.agent_slices["battery"]].max()) < 1e-9
    assert float(dv[:, :, sim.agent_slices["generator"]].max()) < 1e-9


def test_device_ranges_are_the_papers():
    """Normalised power p / p_max: batteries [-1, 1], heat pumps [0, 1], generators [-1, -0.15]."""
    sim = make_sim(feeder="ieee13", n_agents=30, generator_ramp_limit=False)
    state = sim.reset(2, seed=0, split="test", days=[28, 203])
    for a in (-1.0, 1.0):
        r = sim.step(state, torch.full((2, sim.n_agents), a, dtype=sim.dtype))
        for name, (lo, hi) in {"battery": (-1.0, 1.0), "heatpump": (0.0, 1.0), "generator": (-1.0, -0.15)}.items():
            sl = sim.agent_slices[name]
            norm = r.p_kw[:, sl] / sim.params[name].p_max_kw
            expected = hi if a > 0 else lo
            if name == "battery":  # within its state-of-charge room, all the way
                assert bool(((norm - expected).abs() < 1e-9).any())
            else:
                torch.testing.assert_close(norm, torch.full_like(norm, expected))


def test_thermostat_holds_comfort_on_every_test_day(sim):
    """Heat pumps are sized for their buildings: the rule's thermostat (the "noop" heat pumps) leaves the
    comfort band by at most 1e-3 K per heat-pump step on every test day (device-only rollout: the thermostat
    does not depend on the network)."""
    from gridedge_env.devices import heatpump_step

    days = split_days("test")
    state = sim.reset(None, seed=0, split="test", days=days)
    sl, p = sim.agent_slices["heatpump"], sim.params["heatpump"]
    excursion = torch.zeros(len(days), dtype=sim.dtype)
    for t in range(sim.n_steps):
        a = price_seeking_actions(sim, state)[:, sl]
        out = heatpump_step(p, state.t_indoor_c, a, state.t_outdoor_c[:, t : t + 1], sim.dt_h)
        excursion += out.violation.sum(dim=1)
        state = dataclasses.replace(state, t=t + 1, t_indoor_c=out.next_state)
    per_step = excursion / (sim.n_steps * p.p_max_kw.numel())
    assert float(per_step.max()) <= 1e-3
    # the sizing is what makes it hold: without the margin, the coldest test days leave the band
    bare = make_sim(heatpump_sizing_margin=0.0)
    assert float((bare.params["heatpump"].p_max_kw / p.p_max_kw).max()) == pytest.approx(1 / 1.25)


def test_terminal_condition_prices_the_energy_taken_from_storage(small):
    state = small.reset(2, seed=0, split="test", days=[28, 203])
    sl_b, sl_h = small.agent_slices["battery"], small.agent_slices["heatpump"]
    results = []
    for t in range(small.n_steps):
        a = torch.zeros(2, small.n_agents, dtype=small.dtype)
        a[:, sl_b] = -1.0 if t < 40 else 0.0  # empty the batteries
        a[:, sl_h] = -1.0  # heat pumps off: the buildings drift away from their start
        r = small.step(state, a)
        results.append(r)
        state = r.state
    for r in results[:-1]:
        assert float(r.terminal_shortfall.abs().max()) == 0 and float(r.terminal_cost.abs().max()) == 0
    last = results[-1]
    short = torch.relu(state.soc_init_kwh - state.soc_kwh)
    assert float(short.min()) > 0
    torch.testing.assert_close(last.terminal_shortfall[:, sl_b], short)
    torch.testing.assert_close(last.terminal_cost[:, sl_b], small.config.terminal_price_per_kwh * short)
    # heat pumps off in January (heating) and July (cooling): the building ends colder / warmer than it began
    drift = state.t_indoor_c - state.t_indoor_init_c
    torch.testing.assert_close(last.terminal_shortfall[:, sl_h], torch.relu(torch.stack([-drift[0], drift[1]])))
    assert bool((last.terminal_cost[:, sl_h] > 0).all())
    torch.testing.assert_close(last.cost, last.electricity_cost + last.device_cost + last.terminal_cost)
    assert float(last.terminal_cost[:, small.agent_slices["generator"]].abs().max()) == 0
    # the terminal cost has a gradient back to the actions that emptied the storage
    state = small.reset(1, seed=0, split="test", days=[28])
    acts = torch.full((small.n_steps, 1, small.n_agents), -0.02, dtype=small.dtype, requires_grad=True)
    total = 0.0
    for t in range(small.n_steps):
        r = small.step(state, acts[t])
        state, total = r.state, total + r.terminal_cost.sum()
    total.backward()
    assert float(acts.grad[:, 0, sl_b].abs().sum()) > 0


def test_calibration_fast(sim):
    """Price-seeking operation violates the voltage band on test days (12 of the 70; all 70 below, slow)."""
    days = split_days("test")[::6]
    state = sim.reset(None, seed=0, split="test", days=days)
    m = rollout_metrics(sim, state, price_seeking_actions)
    assert m["pf_failures"] == 0
    assert m["violation_share"] >= 0.05


@pytest.mark.slow
def test_calibration_all_test_days(sim):
    state = sim.reset(None, seed=0, split="test", days=split_days("test"))
    m = rollout_metrics(sim, state, price_seeking_actions)
    assert m["violation_share"] >= 0.05


@pytest.mark.slow
def test_centralised_optimisation_removes_violations(sim):
    from baselines.oracle import optimise_actions

    days = split_days("test")[::18][:4]
    state = sim.reset(None, seed=0, split="test", days=days)
    before = rollout_metrics(sim, state, price_seeking_actions)
    _, after = optimise_actions(sim, state, iterations=150, init=price_seeking_actions)
    assert before["violation_share"] >= 0.05
    assert after["violation_share"] <= 0.005


# ----------------------------------------------------------------------------------------------------------
# Benchmark, CLI, docs
# ----------------------------------------------------------------------------------------------------------


def test_bench_sim_small():
    out = bench_sim("ieee13", n_agents=20, batch=2, repeats=1, opendss_points=6)
    assert out["n_agents"] == 20 and out["batch"] == 2 and out["steps"] == 48
    assert out["forward_agent_steps_per_s"] > 0 and out["forward_backward_agent_steps_per_s"] > 0
    # OpenDSS solved six of the rollout's power flows, with the simulator's loads (nominal law), and agrees
    assert out["opendss_points"] == 6 and out["opendss_converged"] == 6
    assert out["max_abs_err_pu_vs_opendss"] < 1e-6
    rollout = out["opendss_s_per_solve"] * 2 * 48
    assert out["speedup_forward"] == pytest.approx(rollout / out["forward_s_per_rollout"])


def test_cli_bench_sim_json(capsys):
    from gridedge_env.cli import main

    assert main(["bench", "sim", "--feeder", "ieee13", "--agents", "10", "--batch", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_agents"] == 10 and out["forward_backward_s_per_rollout"] > 0


def test_docs_examples_run():
    text = DOCS.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), {})


def test_docs_list_every_observation_feature():
    text = DOCS.read_text()
    for name in OBS_NAMES:
        assert f"`{name}`" in text, name
    for f in dataclasses.fields(SimConfig):
        assert f"`{f.name}`" in text, f.name
