"""IPPO / MAPPO (`baselines.ppo`): smoke runs, evaluation, exact resume, what each critic sees, parameter
sharing, the Lagrangian rewards (network shares, failed power flows, dual ascent), GAE against a hand
computation, input checks, CLI.

Everything runs on IEEE-13 with 12 agents and 2-day rollouts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math

import pytest
import torch

from baselines.ppo import (
    METRIC_FIELDS,
    PPOConfig,
    PPOTrainer,
    gae,
    ippo_config,
    lagrangian_rewards,
    make_policy,
    mappo_config,
    network_shares,
)
from gradmap_agent import GradMAPConfig
from gradmap_agent.config import LagrangianConfig
from gradmap_agent.losses import Multipliers, voltage_violation
from gridedge_env import make_sim, powerflow
from gridedge_env.adapters.batched import clip_obs, global_state
from gridedge_run import EVAL_KEYS, evaluate_policy, obs_policy, train

N_AGENTS = 12
#: metrics that depend on the machine's speed
TIME_FIELDS = ("wall_s", "rollout_s", "update_s", "env_steps_per_s", "agent_steps_per_s", "time_left_s")


@pytest.fixture(scope="module")
def sim13():
    return make_sim(feeder="ieee13", n_agents=N_AGENTS)


def tiny(factory=ippo_config, **overrides) -> PPOConfig:
    fields = {
        "iterations": 2,
        "num_envs": 2,
        "hidden": 8,
        "critic_hidden": 16,
        "epochs": 2,
        "minibatches": 2,
        "checkpoint_every": 1,
    }
    return factory(**{**fields, **overrides})


def strip_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIME_FIELDS} for row in rows]


@pytest.mark.parametrize("factory", [ippo_config, mappo_config])
def test_smoke_train_and_evaluate(sim13, factory):
    make, params, metrics = train(sim13, tiny(factory))
    assert metrics["method"] == ("mappo" if factory is mappo_config else "ippo")
    assert metrics["iterations"] == 2 and len(metrics["history"]) == 2
    row = metrics["final"]
    for key in METRIC_FIELDS:
        if not key.startswith("eval_"):
            assert math.isfinite(row[key]), key
    assert row["pf_failures"] == 0 and 0.0 <= row["clip_fraction"] <= 1.0 and row["approx_kl"] >= 0.0
    policy = make(params)
    state = sim13.reset(2, seed=1, split="test")
    actions = policy(state.obs)
    assert actions.shape == (2, N_AGENTS) and bool((actions.abs() <= 1).all())
    assert torch.equal(policy(state.obs), actions)  # deterministic
    result = evaluate_policy(sim13, obs_policy(policy), split="test", days=2)
    for key in EVAL_KEYS:
        assert key in result, key
    assert result["n_agents"] == N_AGENTS and result["days"] == 2


@pytest.mark.parametrize("factory", [ippo_config, mappo_config])
def test_resume_gives_identical_continuation(sim13, tmp_path, factory):
    config = tiny(factory, iterations=4, share_params=factory is mappo_config)
    _, full_params, full = train(sim13, config)

    def stop_after_two(row):
        if row["iteration"] == 2:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(sim13, config, progress_fn=stop_after_two, out_dir=out)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 2
    _, params, resumed = train(sim13, config, out_dir=out, resume=True)
    assert strip_times(resumed["history"]) == strip_times(full["history"])
    for key, value in full_params["policy"].items():
        assert torch.equal(params["policy"][key], value), key
    assert torch.equal(params["normalizer"]["mean"], full_params["normalizer"]["mean"])
    assert len((out / "metrics.csv").read_text().splitlines()) == 5


@pytest.mark.parametrize("factory", [ippo_config, mappo_config])
def test_only_the_mappo_critic_sees_other_agents(sim13, factory):
    trainer = PPOTrainer(sim13, tiny(factory))
    state = sim13.reset(3, seed=0, split="train")
    obs = clip_obs(state.obs)
    changed = obs.clone()
    changed[:, 0, 4:] += 0.5  # agent 0's local features (voltage, load, PV, own state)

    def values(o: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return trainer.value(trainer.normalize(o), global_state(sim13, state, o))

    before, after = values(obs), values(changed)
    others_moved = (after[:, 1:] - before[:, 1:]).abs().max()
    if factory is mappo_config:
        assert others_moved > 0  # V_i(s) reads every agent's features
    else:
        assert others_moved == 0  # V_i(o_i) reads agent i's own observation only
        assert (after[:, 0] - before[:, 0]).abs().max() > 0


def test_shared_parameters_are_one_network_per_device_type(sim13):
    trainer = PPOTrainer(sim13, tiny(share_params=True))
    types = [name for name, sl in sim13.agent_slices.items() if sl.stop > sl.start]
    assert trainer.actor.net.weights[0].shape[0] == len(types)
    _, params, _ = train(sim13, tiny(share_params=True))
    w = params["policy"]["weights.0"]
    assert w.shape[0] == N_AGENTS  # exported per agent, as make_policy expects
    for sl in sim13.agent_slices.values():
        assert all(torch.equal(w[i], w[sl.start]) for i in range(sl.start, sl.stop))
    firsts = [w[sl.start] for sl in sim13.agent_slices.values() if sl.stop > sl.start]
    assert not torch.equal(firsts[0], firsts[1])
    _, independent, _ = train(sim13, tiny())
    w = independent["policy"]["weights.0"]
    assert not torch.equal(w[0], w[1])  # default: no sharing

    # decentralised either way: agent i's action depends on agent i's observation only
    policy = make_policy(params)
    obs = clip_obs(sim13.reset(2, seed=0, split="test").obs)
    changed = obs.clone()
    changed[:, 0] += 0.3
    moved = (policy(changed) - policy(obs)).abs()
    assert moved[:, 1:].max() == 0 and moved[:, 0].max() > 0


#: a band tightened to [0.99, 1.01] pu: most nodes violate it, so the network terms are not zero
TIGHT = LagrangianConfig(voltage_margin_pu=0.04)


def _multipliers(sim, seed: int) -> Multipliers:
    gen = torch.Generator().manual_seed(seed)
    m = Multipliers.for_sim(sim)
    m.device = torch.rand(sim.n_agents, generator=gen, dtype=torch.float64) * 20.0
    m.voltage = torch.rand(sim.n_steps, sim.n_nodes, generator=gen, dtype=torch.float64) * 1e4
    return m


def test_network_shares_add_up_to_the_network_term(sim13):
    shares = network_shares(sim13)
    assert shares.shape == (sim13.n_nodes, N_AGENTS) and bool((shares >= 0).all())
    torch.testing.assert_close(shares.sum(dim=1), torch.ones(sim13.n_nodes, dtype=shares.dtype))
    # the shares are the agents' voltage sensitivities times their ratings, normalised per node: here the
    # sensitivities come from the power flow's implicit gradient (the shares use finite differences of 1 kW)
    c = sim13.compiled
    scale = sim13.config.load_scale

    def v_mag(injection_p_kw):
        zeros = torch.zeros_like(injection_p_kw)
        loads = dict(load_p_kw=c.load_p_kw * scale, load_q_kvar=c.load_q_kvar * scale)
        return powerflow.solve(c, **loads, injection_p_kw=injection_p_kw, injection_q_kvar=zeros).v_mag_pu[0]

    jacobian = torch.autograd.functional.jacobian(
        v_mag, torch.zeros(1, len(c.injection_node_names), dtype=sim13.dtype)
    )[:, 0]
    rated = torch.cat([sim13.params[name].p_max_kw for name in sim13.agent_slices])
    weight = jacobian.abs()[:, sim13.agent_node] * rated  # [n, N]
    torch.testing.assert_close(shares, weight / weight.sum(dim=1, keepdim=True), rtol=1e-2, atol=5e-4)

    multipliers = _multipliers(sim13, seed=3)
    state = sim13.reset(3, seed=0, split="train")
    for t in range(3):
        actions = torch.linspace(-1.0, 1.0, N_AGENTS, dtype=torch.float64).expand(3, -1)
        r = sim13.step(state, actions)
        reward, dev, w = lagrangian_rewards(
            r, t, multipliers, shares, TIGHT, sim13.config.v_min_pu, sim13.config.v_max_pu, 100.0
        )
        assert bool(r.converged.all())
        expected_w = voltage_violation(r.v_mag_pu, sim13.config.v_min_pu, sim13.config.v_max_pu, 0.04)
        assert float(expected_w.sum()) > 0  # the check below is not vacuous
        torch.testing.assert_close(w, expected_w)
        torch.testing.assert_close(dev, r.device_violation)
        network_term = (multipliers.voltage[t] * w + 0.5 * TIGHT.voltage_quadratic * w * w).sum(dim=1)  # [B] $
        agent_shares = -reward - r.cost - multipliers.device * r.device_violation  # [B, N] $
        torch.testing.assert_close(agent_shares.sum(dim=1), network_term)
        state = r.state


def test_a_failed_power_flow_is_penalised_in_every_reward(sim13):
    multipliers = _multipliers(sim13, seed=4)
    state = sim13.reset(2, seed=0, split="train")
    r = sim13.step(state, torch.zeros(2, N_AGENTS, dtype=torch.float64))
    v = r.v_mag_pu.clone()
    v[0] = float("nan")  # what a diverged solve may leave
    failed = dataclasses.replace(r, converged=torch.tensor([False, True]), v_mag_pu=v)
    shares = network_shares(sim13)
    reward, dev, w = lagrangian_rewards(
        failed, 0, multipliers, shares, TIGHT, sim13.config.v_min_pu, sim13.config.v_max_pu, 100.0
    )
    assert bool(torch.isfinite(reward).all())
    torch.testing.assert_close(reward[0], -(r.cost[0] + multipliers.device * r.device_violation[0] + 100.0))
    # the dual step counts the failed row as voltage collapse (every node at 0 pu) and keeps its device terms
    torch.testing.assert_close(w[0], torch.full_like(w[0], sim13.config.v_min_pu + 0.04))
    torch.testing.assert_close(dev[0], r.device_violation[0])
    converged, _, _ = lagrangian_rewards(
        r, 0, multipliers, shares, TIGHT, sim13.config.v_min_pu, sim13.config.v_max_pu, 100.0
    )
    torch.testing.assert_close(reward[1], converged[1])  # the converged row is unchanged


def test_multipliers_rise_above_the_budget_and_fall_below_it(sim13):
    lag = LagrangianConfig(
        battery_undelivered_kwh_budget=0.5,
        heatpump_comfort_k_steps_budget=0.5,
        generator_undelivered_kwh_budget=0.5,
        voltage_violation_budget=1e-3,
    )
    trainer = PPOTrainer(sim13, tiny(lagrangian=dataclasses.asdict(lag)))
    n_steps, batch = sim13.n_steps, 2
    lam0, mu0 = trainer.multipliers.device.clone(), trainer.multipliers.voltage.clone()
    # above budget: 0.1 per step on every agent (2.4 kWh or 2.4-4.8 K-steps per day) and 0.01 pu on every node
    over = {
        "device_violation": torch.full((n_steps, batch, N_AGENTS), 0.1, dtype=torch.float64),
        "voltage_violation": torch.full((n_steps, batch, sim13.n_nodes), 1e-2, dtype=torch.float64),
    }
    trainer.dual_step(over)
    assert bool((trainer.multipliers.device > lam0).all()) and bool((trainer.multipliers.voltage > mu0).all())
    lam1, mu1 = trainer.multipliers.device.clone(), trainer.multipliers.voltage.clone()
    below = {k: torch.zeros_like(v) for k, v in over.items()}
    trainer.dual_step(below)
    assert bool((trainer.multipliers.device < lam1).all()) and bool((trainer.multipliers.voltage < mu1).all())

    # end to end: rollouts that violate the tightened band raise the network multipliers they are paid with
    trainer = PPOTrainer(sim13, tiny(iterations=1, lagrangian={"voltage_margin_pu": 0.04}))
    row = trainer.iterate()
    assert row["voltage_multiplier_max"] > trainer.config.lagrangian.voltage_multiplier_init
    assert row["voltage_multiplier_mean"] > trainer.config.lagrangian.voltage_multiplier_init


def test_gae_matches_a_hand_computation():
    rewards = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    values = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    # gamma 0.9, lambda 0.8: deltas 1.4, 2.35, 1.5 (no value after the last step);
    # A2 = 1.5, A1 = 2.35 + 0.72 * 1.5 = 3.43, A0 = 1.4 + 0.72 * 3.43 = 3.8696
    adv, ret = gae(rewards, values, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([3.8696, 3.43, 1.5], dtype=torch.float64))
    torch.testing.assert_close(ret, adv + values)
    # lambda 1: the returns are the discounted Monte-Carlo returns; broadcasting over [T, B, N]
    _, ret = gae(rewards[:, None, None].expand(3, 2, 4), values[:, None, None].expand(3, 2, 4), gamma=0.9, lam=1.0)
    torch.testing.assert_close(
        ret[:, 1, 3], torch.tensor([1 + 0.9 * 2 + 0.81 * 3, 2 + 0.9 * 3, 3.0], dtype=torch.float64)
    )


def test_bad_inputs_give_clear_errors(sim13):
    with pytest.raises(ValueError, match="unknown PPOConfig field"):
        ippo_config(batch_days=4)
    with pytest.raises(ValueError, match="num_envs must be an integer >= 1"):
        ippo_config(num_envs=0)
    with pytest.raises(ValueError, match="set iterations or minutes"):
        ippo_config(iterations=None)
    with pytest.raises(ValueError, match="gamma must be in"):
        mappo_config(gamma=1.5)
    with pytest.raises(ValueError, match="pf_failure_penalty must be finite and > 0"):
        ippo_config(pf_failure_penalty=0.0)
    with pytest.raises(ValueError, match=r"unknown PPOConfig field\(s\) \['w_net'\]"):
        ippo_config(w_net=1000.0)  # the old own-node reward's weight: the rewards are the Lagrangian's now
    with pytest.raises(ValueError, match="contradicts the method"):
        ippo_config(centralized_critic=True)
    with pytest.raises(ValueError, match="needs a PPOConfig"):
        PPOTrainer(sim13, GradMAPConfig())
    with pytest.raises(ValueError, match="same shape"):
        gae(torch.zeros(3), torch.zeros(4), 0.9, 0.9)


def test_cli_trains_resumes_and_evaluates(tmp_path):
    from gridedge_run.cli import main

    out = tmp_path / "mappo"
    argv = [
        "train",
        "mappo",
        "--feeder",
        "ieee13",
        "--agents",
        str(N_AGENTS),
        "--iterations",
        "1",
        "--seed",
        "2",
        "--out",
        str(out),
        "--set",
        "num_envs=2",
        "--set",
        "hidden=8",
        "--set",
        "epochs=1",
        "--json",
    ]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0
    summary = json.loads(buf.getvalue())
    assert summary["method"] == "mappo" and summary["iterations"] == 1
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "policies.pt"):
        assert (out / name).is_file(), name
    info = json.loads((out / "config.json").read_text())
    assert info["seed"] == 2 and info["config"]["centralized_critic"] is True
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in (
        "wall_s",
        "cost",
        "violation_share",
        "worst_violation_pu",
        "battery_undelivered_kwh",
        "heatpump_comfort_k_steps",
        "generator_undelivered_kwh",
        "pf_failures",
        "policy_loss",
        "value_loss",
        "entropy",
        "approx_kl",
        "clip_fraction",
        "env_steps_per_s",
    ):
        assert column in header, column

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", "ippo", "--iterations", "2", "--out", str(out), "--resume"]) == 2  # not an ippo run
        assert main(["train", "mappo", "--iterations", "2", "--out", str(out), "--resume"]) == 0
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["evaluate", str(out), "--split", "test", "--days", "2", "--json"]) == 0
    result = json.loads(buf.getvalue())
    for key in EVAL_KEYS:
        assert key in result, key
    assert result["method"] == "mappo" and result["iteration"] == 2
