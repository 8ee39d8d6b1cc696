"""Third-party integrations on a small task (IEEE-13, 12 agents): SuperSuit + Stable-Baselines3, TorchRL, RLlib,
and the example scripts in a small configuration.

PettingZoo's own `parallel_api_test` and `api_test` run in `test_adapters.py`. The libraries come from the
extras `sb3`, `torchrl` and `rllib`, which CI installs (`.ci/run`); `pytest.importorskip` only guards a local
checkout installed without them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gridedge_env
from gridedge_env.adapters.wrappers import HomogenizeWrapper
from gridedge_env.core import OBS_DIM

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SMALL = {"feeder": "ieee13", "n_agents": 12, "mix": (1, 1, 1)}
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny networks and a shared 2-core machine: a second torch thread only adds synchronisation
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sb3_vec_env():
    ss = pytest.importorskip("supersuit")
    pytest.importorskip("stable_baselines3")
    env = HomogenizeWrapper(gridedge_env.parallel_env(**SMALL))
    vec = ss.concat_vec_envs_v1(ss.pettingzoo_env_to_vec_env_v1(env), 1, num_cpus=0, base_class="stable_baselines3")
    return env, vec


def test_supersuit_vec_env_matches_pettingzoo():
    from stable_baselines3.common.vec_env import VecEnv

    env, vec = _sb3_vec_env()
    assert isinstance(vec, VecEnv) and vec.num_envs == 12
    assert vec.observation_space.shape == (OBS_DIM + 3,) and vec.action_space.shape == (1,)
    ref = HomogenizeWrapper(gridedge_env.parallel_env(**SMALL))
    agents = ref.possible_agents
    # SB3's wrapper cannot seed (see examples/sb3_ppo.py): seed the inner vector env
    obs, _ = vec.venv.reset(seed=0)
    ref_obs, _ = ref.reset(seed=0)
    np.testing.assert_array_equal(obs, np.stack([ref_obs[a] for a in agents]))
    actions = np.linspace(-1, 1, 12, dtype=np.float32)[:, None]
    for _ in range(ref.unwrapped.sim.n_steps):  # one slot per agent, in possible_agents order
        obs, rew, dones, _ = vec.step(actions)
        ref_obs, ref_rew, _, ref_trunc, _ = ref.step(dict(zip(agents, actions, strict=True)))
        np.testing.assert_allclose(rew, [ref_rew[a] for a in agents], rtol=1e-6)
        assert dones.tolist() == [ref_trunc[a] for a in agents]
    assert dones.all()  # the whole day ends at once; SuperSuit then resets (its obs is the next episode's)


def test_sb3_ppo_learns_a_few_thousand_steps():
    from stable_baselines3 import PPO

    _, vec = _sb3_vec_env()
    vec.venv.reset(seed=0)
    model = PPO("MlpPolicy", vec, n_steps=48, batch_size=144, n_epochs=2, device="cpu")
    model.learn(total_timesteps=3000)
    assert model.num_timesteps >= 3000
    obs = vec.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (12, 1) and np.all(np.abs(action) <= 1)


def test_torchrl_grouped_by_type_passes_check_env_specs():
    pytest.importorskip("torchrl")
    from torchrl.envs.libs.pettingzoo import PettingZooWrapper
    from torchrl.envs.utils import check_env_specs

    par = gridedge_env.parallel_env(**SMALL)
    env = PettingZooWrapper(par, group_map=par.agent_groups, return_state=True, seed=0)
    assert env.group_map == par.agent_groups and list(env.group_map) == ["battery", "heatpump", "generator"]
    check_env_specs(env, seed=0)
    td = env.rollout(60, break_when_any_done=True)  # stops at the horizon
    assert td.batch_size == (48,)
    for group in env.group_map:
        assert td[group, "observation"].shape == (48, 4, OBS_DIM)
        assert td[group, "action"].shape == (48, 4, 1)
        assert td["next", group, "reward"].shape == (48, 4, 1)
        assert torch.isfinite(td["next", group, "reward"]).all()
    assert td["state"].shape == (48, par.state_space.shape[0])
    assert td["next", "truncated"][-1].all() and not td["next", "done"][:-1].any()


# (script, extra arguments, module it needs); the RLlib integration is tested through its example, because
# ray.init alone takes seconds; the example samples with 2 env runners (Ray actors) of 2 environments each
EXAMPLE_RUNS = [
    ("random_policy.py", [], None),
    ("sb3_ppo.py", ["--timesteps", "960"], "stable_baselines3"),
    ("torchrl_check.py", ["--steps", "5"], "torchrl"),
    ("rllib_ppo.py", ["--iterations", "1"], "ray.rllib"),
]


@pytest.mark.parametrize("script, args, needs", EXAMPLE_RUNS, ids=[r[0] for r in EXAMPLE_RUNS])
def test_example_runs_small(script, args, needs):
    if needs is not None:
        pytest.importorskip(needs)
    cmd = [sys.executable, str(EXAMPLES / script), "--feeder", "ieee13", "--agents", "10", *args]
    if script != "random_policy.py":
        cmd += ["--threads", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-3000:]
    fields = dict(map(str.strip, line.split(": ", 1)) for line in out.stdout.splitlines() if ": " in line)
    assert fields.get("feeder") == "ieee13" and fields.get("agents") == "10", out.stdout
    if script == "rllib_ppo.py":  # one day of each of the 2 x 2 environments, sampled by the env runners
        assert fields["env_runners"] == "2" and fields["envs_per_runner"] == "2", out.stdout
        assert int(fields["env_steps_sampled"]) >= 2 * 2 * 48, out.stdout
