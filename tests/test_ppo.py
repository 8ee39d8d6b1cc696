"""IPPO / MAPPO (`baselines.ppo`): smoke runs, evaluation, exact resume, what each critic sees, parameter
sharing, GAE against a hand computation, input checks, CLI.

Everything runs on IEEE-13 with 12 agents and 2-day rollouts.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch

from baselines.ppo import METRIC_FIELDS, PPOConfig, PPOTrainer, gae, ippo_config, make_policy, mappo_config
from gradmap_agent import GradMAPConfig
from gridedge_env import make_sim
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
    with pytest.raises(ValueError, match="net_scope"):
        ippo_config(net_scope="street")
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
        "device_violation",
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
