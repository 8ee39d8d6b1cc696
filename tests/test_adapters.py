"""Adapters: PettingZoo parallel + AEC, batched torch interface, centralised Gymnasium env, homogenising wrapper.

Every test uses a small configuration (IEEE-13, 12 agents, 4 of each type) so the file stays fast; the
adapter code paths do not depend on the feeder or the agent count.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.error import DependencyNotInstalled
from pettingzoo.test import api_test, parallel_api_test

import gridedge_env
from gridedge_env.adapters import pettingzoo_env
from gridedge_env.adapters.batched import BatchedEnv
from gridedge_env.adapters.gymnasium_env import ENV_ID, GridEdgeCentralEnv
from gridedge_env.adapters.wrappers import HomogenizeWrapper
from gridedge_env.core import OBS_DIM

SMALL = {"feeder": "ieee13", "n_agents": 12, "mix": (1, 1, 1)}
INFO_KEYS = set(pettingzoo_env.INFO_KEYS)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_actions(env, rng):
    return {a: rng.uniform(-1.0, 1.0, size=(1,)).astype(np.float32) for a in env.agents}


def _assert_equal_dicts(d1, d2):
    assert list(d1) == list(d2)
    for k in d1:
        v1, v2 = d1[k], d2[k]
        if isinstance(v1, dict):
            _assert_equal_dicts(v1, v2)
        else:
            np.testing.assert_array_equal(np.asarray(v1), np.asarray(v2), err_msg=str(k))


# ----------------------------------------------------------------------------------------------------------
# PettingZoo
# ----------------------------------------------------------------------------------------------------------


def test_import_stays_light():
    code = (
        "import sys, gridedge_env; assert 'pettingzoo' not in sys.modules and 'gymnasium' not in sys.modules; "
        "assert callable(gridedge_env.parallel_env); assert 'pettingzoo' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_exports_and_versioned_module():
    from gridedge_env import ieee123_v3

    assert gridedge_env.parallel_env is ieee123_v3.parallel_env is pettingzoo_env.parallel_env
    assert gridedge_env.env is ieee123_v3.env and gridedge_env.raw_env is ieee123_v3.raw_env
    doc = pettingzoo_env.__doc__
    for section in (
        "## Agents",
        "## Actions",
        "## Observations",
        "## State",
        "## Rewards",
        "## Infos",
        "## Arguments",
        "## Version history",
    ):
        assert section in doc


def test_parallel_api_test():
    parallel_api_test(gridedge_env.parallel_env(**SMALL), num_cycles=120)


def test_aec_api_test():
    api_test(gridedge_env.env(**SMALL), num_cycles=60)
    api_test(gridedge_env.raw_env(**SMALL), num_cycles=10)


def test_spaces_one_object_per_agent():
    env = gridedge_env.parallel_env(**SMALL)
    agents = env.possible_agents
    assert len(agents) == 12 and agents == env.sim.agents
    assert len({id(env.observation_space(a)) for a in agents}) == len(agents)
    assert len({id(env.action_space(a)) for a in agents}) == len(agents)
    for a in agents:
        assert env.observation_space(a) is env.observation_spaces[a]
        s = env.action_space(a)
        assert s.shape == (1,) and s.dtype == np.float32 and s.low[0] == -1 and s.high[0] == 1
        o = env.observation_space(a)
        assert o.shape == (OBS_DIM,) and o.dtype == np.float32
    assert env.agent_groups == env.sim.agent_groups


def test_episode_contract():
    """agents == possible_agents after reset; every agent in every dict; joint truncation; flat numeric infos."""
    env = gridedge_env.parallel_env(**SMALL)
    rng = np.random.default_rng(0)
    for seed in (0, None):
        obs, infos = env.reset(seed=seed)
        assert env.agents == env.possible_agents
        assert list(obs) == list(infos) == env.possible_agents
        for a in env.agents:
            assert set(infos[a]) == INFO_KEYS
            assert env.observation_space(a).contains(obs[a])
        steps = 0
        while env.agents:
            obs, rew, term, trunc, infos = env.step(_random_actions(env, rng))
            steps += 1
            for d in (obs, rew, term, trunc, infos):
                assert list(d) == env.possible_agents
            assert not any(term.values())
            assert len(set(trunc.values())) == 1
            for a in env.possible_agents:
                assert env.observation_space(a).contains(obs[a]), (a, obs[a])
                assert isinstance(rew[a], float) and np.isfinite(rew[a])
                assert set(infos[a]) == INFO_KEYS
                for k, v in infos[a].items():
                    assert isinstance(v, bool | int | float), (k, v)
                assert infos[a]["TimeLimit.truncated"] == trunc[a]
            st = env.state()
            assert env.state_space.contains(st)
        assert steps == env.sim.n_steps and all(trunc.values()) and env.agents == []
        with pytest.raises(ValueError, match="episode is over"):
            env.step({})
    assert env.state_space.shape == (4 + 8 * 12 + env.sim.n_load_nodes,)


def _rollout(env, seed, n_steps, action_seed=0):
    rng = np.random.default_rng(action_seed)
    out = [env.reset(seed=seed) + (env.state(),)]
    for _ in range(n_steps):
        if not env.agents:
            out.append(env.reset() + (env.state(),))  # unseeded: the next seed from the seeded generator
        out.append(env.step(_random_actions(env, rng)) + (env.state(),))
    return out


def test_determinism_two_instances_50_steps():
    """Two instances, same seed, 50 steps (across an episode boundary): exactly equal, always inside the spaces."""
    e1, e2 = gridedge_env.parallel_env(**SMALL), gridedge_env.parallel_env(**SMALL)
    r1, r2 = _rollout(e1, 7, 50), _rollout(e2, 7, 50)
    assert len(r1) == len(r2) == 52
    for x, y in zip(r1, r2, strict=True):
        assert len(x) == len(y)
        for p, q in zip(x[:-1], y[:-1], strict=True):
            _assert_equal_dicts(p, q)
        np.testing.assert_array_equal(x[-1], y[-1])
        for a, o in x[0].items():
            assert e1.observation_space(a).contains(o)
    # another seed gives another episode
    r3 = _rollout(gridedge_env.parallel_env(**SMALL), 8, 3)
    assert not np.array_equal(r1[0][-1], r3[0][-1])


def test_rewards_match_the_core():
    for scope in ("node", "feeder"):
        env = gridedge_env.parallel_env(**SMALL, net_scope=scope, w_dev=3.0, w_net=500.0)
        env.reset(seed=1)
        sim, state = env.sim, env._core_state
        acts = _random_actions(env, np.random.default_rng(2))
        _, rew, _, _, infos = env.step(acts)
        a = torch.tensor([[acts[n][0] for n in sim.agents]], dtype=sim.dtype)
        r = sim.step(state, a)
        node = [sim.node_names.index(nm) for nm in sim.agent_node_names]
        net = r.voltage_violation[0, node] if scope == "node" else r.voltage_violation[0].sum().expand(12)
        expect = -(r.cost[0] + 3.0 * r.device_violation[0] + 500.0 * net)
        np.testing.assert_allclose([rew[n] for n in sim.agents], expect.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose([infos[n]["cost"] for n in sim.agents], r.cost[0].numpy())
        np.testing.assert_allclose([infos[n]["v_node_pu"] for n in sim.agents], r.v_mag_pu[0, node].numpy())
    with pytest.raises(ValueError, match="net_scope"):
        gridedge_env.parallel_env(**SMALL, net_scope="bus")
    with pytest.raises(ValueError, match="unknown"):
        gridedge_env.parallel_env(**SMALL, bogus=1)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda acts: acts.pop("heatpump_2"), "missing .*heatpump_2"),
        (lambda acts: acts.__setitem__("battery_99", np.zeros(1, np.float32)), "unknown agent .*battery_99"),
        (lambda acts: acts.__setitem__("generator_1", np.zeros(2, np.float32)), "generator_1.*shape"),
        (lambda acts: acts.__setitem__("battery_3", np.array([np.nan], np.float32)), "battery_3.*NaN"),
        (lambda acts: acts.__setitem__("battery_0", np.array([np.inf])), "battery_0.*infinite"),
        (lambda acts: acts.__setitem__("heatpump_0", "up"), "heatpump_0.*not numeric"),
        # every value of one wrong shape: the fast path's array has the wrong shape, the first agent is named
        (lambda acts: acts.update({a: np.zeros((1, 1), np.float32) for a in acts}), "battery_0.*shape \\(1, 1\\)"),
    ],
)
def test_bad_actions_raise_and_leave_env_usable(mutate, match):
    env = gridedge_env.parallel_env(**SMALL)
    ref = gridedge_env.parallel_env(**SMALL)
    rng = np.random.default_rng(0)
    env.reset(seed=3)
    ref.reset(seed=3)
    good = _random_actions(env, rng)
    env.step(good)
    ref.step(good)
    before = env.state().copy()
    bad = dict(_random_actions(env, rng))
    mutate(bad)
    with pytest.raises(ValueError, match=match):
        env.step(bad)
    np.testing.assert_array_equal(env.state(), before)
    assert env._core_state.t == 1 and env.agents == env.possible_agents
    nxt = _random_actions(env, rng)
    _assert_equal_dicts(env.step(nxt)[1], ref.step(nxt)[1])


def test_scalar_actions_accepted():
    env = gridedge_env.parallel_env(**SMALL)
    env.reset(seed=0)
    r1 = env.step({a: 0.5 for a in env.agents})[1]
    env.reset(seed=0)
    r2 = env.step({a: np.array([0.5], np.float32) for a in env.agents})[1]
    env.reset(seed=0)
    mixed = {a: (0.5 if i % 2 else np.array([0.5], np.float32)) for i, a in enumerate(env.agents)}
    r3 = env.step(mixed)[1]
    assert r1 == r2 == r3


@pytest.mark.parametrize("dumps, loads", [(pickle.dumps, pickle.loads), (cloudpickle.dumps, pickle.loads)])
def test_pickle_mid_episode(dumps, loads):
    env = gridedge_env.parallel_env(**SMALL)
    rng = np.random.default_rng(0)
    env.reset(seed=4)
    env.step(_random_actions(env, rng))
    copy = loads(dumps(env))
    np.testing.assert_array_equal(copy.state(), env.state())
    acts = _random_actions(env, rng)
    for x, y in zip(env.step(acts), copy.step(acts), strict=True):
        _assert_equal_dicts(x, y)
    fresh = loads(dumps(gridedge_env.parallel_env(**SMALL)))  # before any reset
    fresh.reset(seed=0)


def test_reset_options_day():
    env = gridedge_env.parallel_env(**SMALL, split="test")
    from gridedge_env.scenarios import split_days

    day = int(split_days("test")[5])
    env.reset(seed=0, options={"day": day})
    assert int(env._core_state.day_idx[0]) == day
    with pytest.raises(ValueError):
        env.reset(seed=0, options={"day": int(split_days("train")[0])})


def test_render_needs_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(DependencyNotInstalled, match="matplotlib"):
            gridedge_env.parallel_env(**SMALL, render_mode="rgb_array")
    else:
        env = gridedge_env.parallel_env(**SMALL, render_mode="rgb_array")
        env.reset(seed=0)
        env.step({a: np.zeros(1, np.float32) for a in env.agents})
        img = env.render()
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
        env.close()
    with pytest.raises(ValueError, match="render_mode"):
        gridedge_env.parallel_env(**SMALL, render_mode="video")
    assert gridedge_env.parallel_env(**SMALL).render() is None


# ----------------------------------------------------------------------------------------------------------
# Batched torch interface
# ----------------------------------------------------------------------------------------------------------


def test_batched_matches_pettingzoo():
    benv = BatchedEnv(1, **SMALL, net_scope="feeder")
    penv = gridedge_env.parallel_env(**SMALL, net_scope="feeder")
    obs_b = benv.reset(seed=5)
    obs_p, _ = penv.reset(seed=5)
    agents = penv.possible_agents
    np.testing.assert_array_equal(obs_b[0].numpy(), np.stack([obs_p[a] for a in agents]))
    np.testing.assert_array_equal(benv.global_state()[0].numpy(), penv.state())
    rng = np.random.default_rng(0)
    for _ in range(benv.sim.n_steps):
        acts = _random_actions(penv, rng)
        a = torch.tensor([[acts[n][0] for n in agents]])
        obs_b, rew_b, term_b, trunc_b, info = benv.step(a[..., None])
        obs_p, rew_p, _, trunc_p, _ = penv.step(acts)
        np.testing.assert_array_equal(obs_b[0].numpy(), np.stack([obs_p[n] for n in agents]))
        np.testing.assert_array_equal(rew_b[0].numpy(), np.array([rew_p[n] for n in agents], np.float32))
        assert bool(trunc_b.all()) == trunc_p[agents[0]] and not term_b.any()
    assert bool(trunc_b.all())
    with pytest.raises(ValueError, match="episode is over"):
        benv.step(a)


def test_batched_shapes_and_errors():
    env = BatchedEnv(4, **SMALL)
    obs = env.reset(seed=0)
    assert obs.shape == (4, 12, OBS_DIM) and obs.dtype == torch.float32
    obs, rew, term, trunc, info = env.step(torch.zeros(4, 12))
    assert rew.shape == term.shape == trunc.shape == (4, 12) and rew.dtype == torch.float32
    assert info["cost"].shape == (4, 12) and info["feeder_voltage_violation"].shape == (4,)
    assert env.global_state().shape == (4, 4 + 8 * 12 + env.sim.n_load_nodes)
    state = env.state
    with pytest.raises(ValueError, match="shape"):
        env.step(torch.zeros(4, 11))
    with pytest.raises(ValueError, match="NaN"):
        env.step(torch.full((4, 12), float("nan")))
    assert env.state is state
    with pytest.raises(ValueError):
        BatchedEnv(0, **SMALL)


# ----------------------------------------------------------------------------------------------------------
# Centralised Gymnasium env
# ----------------------------------------------------------------------------------------------------------


def test_gymnasium_registered_and_checked():
    from gymnasium.utils.env_checker import check_env

    assert ENV_ID == "gridedge/IEEE123-v3" and ENV_ID in gym.registry
    env = gym.make(ENV_ID, **SMALL)
    assert isinstance(env.unwrapped, GridEdgeCentralEnv)
    check_env(env.unwrapped, skip_render_check=True)
    assert env.action_space.shape == (12,)
    obs, _ = env.reset(seed=2)
    assert env.observation_space.contains(obs)
    steps, trunc = 0, False
    penv = gridedge_env.parallel_env(**SMALL, net_scope="node")
    penv.reset(seed=2)
    rng = np.random.default_rng(0)
    while not trunc:
        a = rng.uniform(-1, 1, 12).astype(np.float32)
        obs, rew, term, trunc, info = env.step(a)
        _, _, _, _, pinfo = penv.step(dict(zip(penv.possible_agents, a[:, None], strict=True)))
        steps += 1
        assert not term and env.observation_space.contains(obs)
        np.testing.assert_array_equal(obs, penv.state())
        cost = sum(pinfo[n]["cost"] for n in penv.possible_agents)
        dev = sum(pinfo[n]["device_violation"] for n in penv.possible_agents)
        net = pinfo[penv.possible_agents[0]]["feeder_voltage_violation"]
        np.testing.assert_allclose(rew, -(cost + 10.0 * dev + 1000.0 * net), rtol=1e-10)
    assert steps == 48
    with pytest.raises(ValueError, match="shape"):
        env.unwrapped.step(np.zeros(3))


# ----------------------------------------------------------------------------------------------------------
# Homogenising wrapper
# ----------------------------------------------------------------------------------------------------------


def test_homogenize_wrapper():
    env = HomogenizeWrapper(gridedge_env.parallel_env(**SMALL))
    parallel_api_test(env, num_cycles=60)
    obs, _ = env.reset(seed=0)
    assert env.types == ["battery", "heatpump", "generator"]
    spaces_ = [env.observation_space(a) for a in env.possible_agents]
    assert all(s == spaces_[0] for s in spaces_) and spaces_[0].shape == (OBS_DIM + 3,)
    assert len({id(s) for s in spaces_}) == len(spaces_)
    raw, _ = env.env.reset(seed=0)
    for a in env.possible_agents:
        t = a.rsplit("_", 1)[0]
        np.testing.assert_array_equal(obs[a][:OBS_DIM], raw[a])
        np.testing.assert_array_equal(obs[a][OBS_DIM:], np.eye(3, dtype=np.float32)[env.types.index(t)])
        assert env.observation_space(a).contains(obs[a])


# ----------------------------------------------------------------------------------------------------------
# Benchmark command
# ----------------------------------------------------------------------------------------------------------


def test_bench_env_command(capsys):
    from gridedge_env.cli import main

    assert main(["bench", "env", "--feeder", "ieee13", "--agents", "12", "--steps", "60", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # exactly one JSON object
    assert out["feeder"] == "ieee13" and out["n_agents"] == 12 and out["steps"] == 60
    assert out["steps_per_episode"] == 48 and out["steps_per_s"] > 0
    assert out["agent_steps_per_s"] == pytest.approx(12 * out["steps_per_s"])
    assert main(["bench", "env", "--feeder", "ieee13", "--agents", "12", "--steps", "0"]) == 2
    assert "steps must be at least 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# Docs
# ----------------------------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "environment.md"


def test_docs_spec_matches_module_docstring():
    text = DOCS.read_text()
    spec = text.split("<!-- spec:begin -->\n", 1)[1].split("\n<!-- spec:end -->", 1)[0]
    demoted = "\n".join("#" + ln if ln.startswith("#") else ln for ln in pettingzoo_env.__doc__.strip().splitlines())
    assert spec == demoted
