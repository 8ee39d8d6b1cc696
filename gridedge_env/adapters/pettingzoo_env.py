"""# gridedge IEEE-123 (``gridedge_env.ieee123_v3``): decentralised control of grid-edge devices

```python
import gridedge_env
env = gridedge_env.parallel_env()              # PettingZoo ParallelEnv; gridedge_env.env() is the AEC version
obs, infos = env.reset(seed=0)
while env.agents:
    actions = {a: env.action_space(a).sample() for a in env.agents}
    obs, rewards, terminations, truncations, infos = env.step(actions)
```

| | |
|---|---|
| Import | ``from gridedge_env import ieee123_v3`` (or ``gridedge_env.parallel_env`` / ``env`` / ``raw_env``) |
| Actions | continuous, ``Box(-1, 1, (1,), float32)`` per agent |
| Parallel API | yes (native); AEC through PettingZoo's ``parallel_to_aec`` |
| Agents | ``battery_<i>``, ``heatpump_<i>``, ``generator_<i>``; default 400 / 400 / 200 (1,000) |
| Observations | ``Box(low, high, (12,), float32)`` per agent (bounds below) |
| State | ``Box(low, high, (4 + 8N + J,), float32)`` (``state()``, ``state_space``) |
| Episode | one day: 48 steps of 30 minutes; no termination, all agents truncate together at the horizon |

A three-phase unbalanced distribution feeder (IEEE-123 by default) with single-phase devices, each an agent
with its own local observation. The physics is the functional core (``gridedge_env.make_sim``,
``docs/simulator.md``); this adapter holds one core ``State`` with batch size 1 and converts at the edge
(torch -> numpy float32). Agents are coupled only through the AC power flow: voltages outside
[0.95, 1.05] pu anywhere on the feeder are the network constraint.

## Agents

``env.possible_agents`` = ``sim.agents``: all batteries, then heat pumps, then generators (``agent_groups``
maps each type to its names). ``env.agents == env.possible_agents`` (same order) after every reset; every
agent is in every dict of every step; after the last step (truncation) ``env.agents`` is empty until the next
reset. Each agent is a single-phase device at one load node (``env.sim.agent_node_names``).

## Actions

One float in [-1, 1] per agent (values outside are clipped by the core), rescaled inside the core:

| type | action a |
|---|---|
| battery | ``a * p_max``: charge (+) / discharge (-) |
| heatpump | ``(1 + a) / 2 * p_max`` electrical (a = -1 off, +1 full load); heats below the band centre, else cools |
| generator | output ``(0.15 + 0.85 (1 - a) / 2) * p_max`` (a = -1 full output, +1 the 15 % minimum) |

``step(actions)`` needs a dict with exactly the live agents (``env.agents``), each value of shape ``(1,)`` or
``()``. **A missing agent, an unknown agent name, a value of another shape, a non-numeric value, NaN or
infinity is a ``ValueError`` that names the agent and the problem; the environment is then unchanged and
usable.** Stepping after the episode ended is a ``ValueError`` too.

## Observations

float32, the same 12 features for every type (``gridedge_env.OBS_NAMES``); everything is local.

| index | name | value | bounds |
|---|---|---|---|
| 0 | ``time_sin`` | sin(2 pi t / T) | [-1, 1] |
| 1 | ``time_cos`` | cos(2 pi t / T) | [-1, 1] |
| 2 | ``price`` | import price of step t, $/kWh / 0.40 | [0, 10] |
| 3 | ``t_outdoor`` | outdoor temperature, C / 20 | [-5, 5] |
| 4 | ``v_node`` | (own node voltage after the previous step, pu - 1) / 0.05 (band edges = -1, +1) | [-20, 20] |
| 5 | ``node_load`` | household load at own node, kW per kW of the node's spot load | [0, 100] |
| 6 | ``node_pv`` | rooftop PV at own node, kW per kW of the node's spot load | [0, 100] |
| 7 | ``own_state`` | by type, below | [-10, 10] |
| 8 | ``own_reference`` | by type, below | [-10, 10] |
| 9 | ``rule_action`` | the action the device's built-in controller would take now, below | [-1, 1] |
| 10 | ``action_low`` | the lowest action the device can take now without a device violation, below | [-1, 1] |
| 11 | ``action_high`` | the highest such action, below | [-1, 1] |

``own_state``: battery, state of charge as a share of its usable range ([0, 1]); heat pump, (indoor
temperature - comfort band centre) / half band width ([-1, 1] inside the band); generator, previous output /
p_max ([0, 1]). ``own_reference``: the terminal condition's reference on the same scale, fixed for the day:
battery, the initial state of charge; heat pump, the initial indoor temperature; generator, 0 (no terminal
condition). The device's own memory of the day's start: without it a local policy cannot tell how much it
must put back before the day ends. ``rule_action``: what the device does on its own, without a learned
controller (doing nothing): battery 0 (idle), generator +1 (its minimum output), heat pump its thermostat,
which keeps the comfort band and preheats (precools) in the day's cheapest hours
(``gridedge_env.core.builtin_actions``). The thermostat needs the building's thermal resistance, capacitance
and the unit's COP, which no other feature carries. ``action_low``, ``action_high``: the actions the device
can take now without a device violation, now or at the day's end (``gridedge_env.core.action_bounds``):
battery, what its state of charge allows in this step and no deeper discharge than full-power charging over
the day's remaining steps can make up (its terminal condition); generator, its ramp window; heat pump, the
loads that keep the building inside its comfort band at the end of the step. Actions outside them are still
accepted: the simulator projects them and scores the violation.

The bounds are generous: a converged step stays well inside them. **Anything outside (e.g. after a power flow
that did not converge) is clipped to the bounds, and NaN becomes 0**, so an observation is always inside its
space (``infos[a]["pf_converged"]`` flags such steps).

## State (centralised critics)

``env.state()``: float32 ``[4 + 8N + J]``: the 4 shared features (time_sin, time_cos, price, t_outdoor), then
each agent's 8 local features (v_node, node_load, node_pv, own_state, own_reference, rule_action, action_low,
action_high) agent after agent in ``possible_agents`` order, then (v - 1) / 0.05 at each of the J load nodes
(``env.sim.load_node_names``). IEEE-123 with 1,000 agents: 8,100 entries.

## Rewards

``r_i = -(cost_i + w_dev * device_violation_i + w_net * network_i)``

- ``cost_i``: electricity at the step's price plus battery degradation / generator fuel, $;
- ``device_violation_i``: kW of the request projected away (battery, generator) or K outside the comfort
  band (heat pump);
- ``network_i``: with ``net_scope="node"`` (default) the voltage violation at the agent's own node,
  ``relu(v - 1.05) + relu(0.95 - v)`` pu; with ``net_scope="feeder"`` the sum of that over all feeder nodes,
  the same for every agent.

Defaults ``w_dev = 10`` ($ per kW or K), ``w_net = 1000`` ($ per pu). Centralised (Gymnasium) reward: see
``gridedge_env.adapters.gymnasium_env``.

## Infos

Flat and numeric, the same keys for every agent at reset and at every step (quantities of the step just
taken; 0 at reset): ``cost`` ($), ``device_violation``, ``v_node_pu`` (own node's voltage magnitude, pu; at
reset the idle power flow's), ``node_voltage_violation`` (pu), ``feeder_voltage_violation`` (pu, sum over all
nodes), ``pf_converged`` (1.0 / 0.0), ``TimeLimit.truncated`` (bool).

## Arguments

``parallel_env(render_mode=None, split="train", w_dev=10.0, w_net=1000.0, net_scope="node", **sim_options)``

- ``split``: days and household profiles episodes are drawn from: ``"train"``, ``"validation"`` (for tuning),
  ``"test"`` (out-of-sample: held-out weeks and households) or ``"all"``;
- ``w_dev``, ``w_net``, ``net_scope``: the reward, above;
- ``render_mode``: ``None``, ``"rgb_array"`` or ``"human"`` (needs matplotlib, the ``render`` extra): per-phase
  voltage profile over the feeder's nodes with the limits, and the last actions by device type;
- ``**sim_options``: any field of ``gridedge_env.SimConfig`` (``feeder``, ``n_agents``, ``mix``,
  ``step_minutes``, ``seed`` of the placement, ``dtype``, ...). Unknown keywords are a ``ValueError``.

``reset(seed=None, options=None)``: ``seed`` seeds the episode (day, household loads, initial device
states); without it the next seed comes from the generator of the last seeded reset. ``options={"day": d}``
picks a day of the split. The environment pickles (``pickle``, ``cloudpickle``) with its current state.

## Version history

- v3: two observation features, ``action_low`` and ``action_high``, the actions each device can take without a
  device violation (its state of charge, terminal condition, ramp window or comfort band). Dynamics, costs
  and rewards are v2's.
- v2: a tenth observation feature, ``rule_action``, the action of the device's built-in controller (battery
  idle, generator at its minimum, heat pump on its thermostat). Dynamics, costs and rewards are v1's.
- v1: a well-posed task. Heat pumps sized for their buildings at the weather's design temperatures, the
  paper's device ranges (heat pumps consume [0, 1] of full load in a heating or cooling mode set by the
  outdoor temperature; generators run between 15 % and 100 %), batteries sized by storage duration, a terminal
  condition priced into the last step's cost and observed as each device's ``own_reference``, days split by
  whole weeks into train/validation/test with disjoint household profiles. v0 (reversible heat pumps drawn
  independently of their buildings, generators that switch off, no terminal condition, every fifth day a test
  day) is no longer shipped.
- v0: first release (IEEE-123, 1,000 agents, 48 x 30-minute steps).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.error import DependencyNotInstalled
from pettingzoo import ParallelEnv
from pettingzoo.utils.conversions import parallel_to_aec_wrapper
from pettingzoo.utils.wrappers import OrderEnforcingWrapper

from gridedge_env.adapters.batched import (
    OBS_HIGH,
    OBS_LOW,
    agent_node_index,
    agent_rewards,
    clip_obs,
    global_state,
    global_state_bounds,
    network_terms,
    reset_option_days,
    split_config,
)
from gridedge_env.core import OBS_DIM, check_seed, make_sim, real_array
from gridedge_env.scenarios import split_days

__all__ = ["GridEdgeParallelEnv", "bench_parallel_env", "env", "parallel_env", "raw_env"]

INFO_KEYS = (
    "cost",
    "device_violation",
    "v_node_pu",
    "node_voltage_violation",
    "feeder_voltage_violation",
    "pf_converged",
    "TimeLimit.truncated",
)
RENDER_MODES = ("human", "rgb_array")


def _require_matplotlib():
    try:
        import matplotlib
    except ImportError as exc:
        raise DependencyNotInstalled(
            "rendering needs matplotlib, which is not installed: pip install matplotlib "
            "(or the 'render' extra of gridedge)"
        ) from exc
    return matplotlib


class GridEdgeParallelEnv(ParallelEnv):
    """PettingZoo ParallelEnv over the functional core (spec: this module's docstring)."""

    metadata = {
        "name": "gridedge_ieee123_v3",
        "render_modes": list(RENDER_MODES),
        "is_parallelizable": True,
        "render_fps": 2,
    }

    def __init__(self, render_mode: str | None = None, split: str = "train", **cfg) -> None:
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise ValueError(f"render_mode must be None or one of {RENDER_MODES}, got {render_mode!r}")
        if render_mode is not None:
            _require_matplotlib()
        sim_cfg, self.reward_config, rest = split_config(cfg)
        if rest:
            raise ValueError(f"unknown option(s) {sorted(rest)}")
        self.render_mode = render_mode
        self.split = split
        split_days(split)  # raises ValueError naming an unknown split
        self.sim = make_sim(**sim_cfg)
        self.possible_agents: list[str] = list(self.sim.agents)
        self.agents: list[str] = []
        self.agent_groups = {k: list(v) for k, v in self.sim.agent_groups.items()}
        self._agent_set = frozenset(self.possible_agents)
        self._index = {a: i for i, a in enumerate(self.possible_agents)}
        # one space object per agent, built once
        self.observation_spaces = {
            a: spaces.Box(OBS_LOW.copy(), OBS_HIGH.copy(), (OBS_DIM,), np.float32) for a in self.possible_agents
        }
        self.action_spaces = {a: spaces.Box(-1.0, 1.0, (1,), np.float32) for a in self.possible_agents}
        low, high = global_state_bounds(self.sim)
        self.state_space = spaces.Box(low, high, low.shape, np.float32)
        self._node_index = agent_node_index(self.sim)
        self._node_index_np = self._node_index.cpu().numpy()
        self._core_state = None
        self._obs32: torch.Tensor | None = None
        self._rng = np.random.default_rng()
        self._last = None  # (v_mag_pu [n], actions [N]) of the last step, for render
        self._fig = None

    # -- spaces ---------------------------------------------------------------------------------------------

    def observation_space(self, agent: str) -> spaces.Box:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Box:
        return self.action_spaces[agent]

    @property
    def num_agents(self) -> int:
        return len(self.agents)

    @property
    def max_num_agents(self) -> int:
        return len(self.possible_agents)

    # -- episode --------------------------------------------------------------------------------------------

    def reset(self, seed: int | None = None, options: dict | None = None):
        days = reset_option_days(options)
        # a rejected seed or option leaves the episode generator as it was
        rng = self._rng if seed is None else np.random.default_rng(check_seed(seed))
        episode_seed = int(rng.integers(2**31 - 1)) if seed is None else int(seed)
        self._core_state = self.sim.reset(None if days else 1, seed=episode_seed, split=self.split, days=days)
        self._rng = rng
        self.agents = list(self.possible_agents)
        self._obs32 = clip_obs(self._core_state.obs)
        self._last = None
        v = self._core_state.v_node_pu[0].detach().cpu().numpy()[self.sim.agent_node.cpu().numpy()]
        n = len(self.agents)
        zeros = [0.0] * n
        infos = self._infos(zeros, zeros, v.tolist(), zeros, 0.0, 1.0, False)
        return self._obs_dict(), infos

    def _obs_dict(self) -> dict[str, np.ndarray]:
        rows = self._obs32[0].cpu().numpy()
        return dict(zip(self.possible_agents, rows, strict=True))

    def _infos(self, cost, dev, v, node_vv, feeder_vv: float, conv: float, trunc: bool) -> dict[str, dict]:
        return {
            a: {
                "cost": c,
                "device_violation": d,
                "v_node_pu": vn,
                "node_voltage_violation": nv,
                "feeder_voltage_violation": feeder_vv,
                "pf_converged": conv,
                "TimeLimit.truncated": trunc,
            }
            for a, c, d, vn, nv in zip(self.possible_agents, cost, dev, v, node_vv, strict=True)
        }

    def _parse_actions(self, actions) -> torch.Tensor:
        if self._core_state is None:
            raise ValueError("call reset() before step()")
        if not self.agents:
            raise ValueError("the episode is over (all agents truncated); call reset()")
        if not isinstance(actions, dict):
            raise ValueError(f"actions must be a dict {{agent name: action}}, got {type(actions).__name__}")
        if actions.keys() != self._agent_set:
            unknown = [a for a in actions if a not in self._agent_set]
            if unknown:
                raise ValueError(f"unknown agent name(s) in actions: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
            missing = [a for a in self.agents if a not in actions]
            raise ValueError(
                f"actions missing for {len(missing)} agent(s): {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''} (every live agent must act each step)"
            )
        values = [actions[a] for a in self.possible_agents]
        try:  # fast path: one conversion for all agents
            arr = real_array(values, "actions")
        except ValueError:
            arr = None
        if arr is None or arr.shape not in ((len(values),), (len(values), 1)):
            arr = self._parse_one_by_one(values)
        arr = arr.reshape(-1)
        bad = ~np.isfinite(arr)
        if bad.any():
            i = int(bad.argmax())
            raise ValueError(f"action of agent {self.possible_agents[i]!r} is {arr[i]} (NaN or infinite)")
        return torch.from_numpy(arr)[None]

    def _parse_one_by_one(self, values: list) -> np.ndarray:
        """Slow path of `_parse_actions` (mixed ``()`` and ``(1,)`` values, or a bad one): names the bad agent."""
        out = np.empty(len(values), np.float64)
        for i, (a, x) in enumerate(zip(self.possible_agents, values, strict=True)):
            try:
                xa = real_array(x, f"action of agent {a!r}")
            except ValueError as exc:
                raise ValueError(f"action of agent {a!r} is not numeric (a real number): {x!r}") from exc
            if xa.shape not in ((), (1,)):
                raise ValueError(f"action of agent {a!r} has shape {xa.shape}, expected (1,)")
            out[i] = xa.reshape(())
        return out

    def step(self, actions: dict):
        a = self._parse_actions(actions)  # raises before anything changes
        with torch.no_grad():  # the adapter never needs gradients: no autograd tape
            result = self.sim.step(self._core_state, a.to(dtype=self.sim.dtype, device=self.sim.device))
            rewards = agent_rewards(result, self._node_index, self.reward_config)[0]
            own, feeder = network_terms(result, self._node_index)
        self._core_state = result.state
        self._obs32 = clip_obs(result.obs)
        self._last = (result.v_mag_pu[0].detach().cpu().numpy(), result.action[0].detach().cpu().numpy())
        trunc = bool(result.truncated)
        v_agent = result.v_mag_pu[0].detach().cpu().numpy()[self._node_index_np]
        infos = self._infos(
            result.cost[0].detach().cpu().tolist(),
            result.device_violation[0].detach().cpu().tolist(),
            v_agent.tolist(),
            own[0].cpu().tolist(),
            float(feeder[0]),
            float(bool(result.converged[0])),
            trunc,
        )
        agents = self.possible_agents
        obs = self._obs_dict()
        rew = dict(zip(agents, rewards.cpu().tolist(), strict=True))
        terminations = dict.fromkeys(agents, False)
        truncations = dict.fromkeys(agents, trunc)
        if trunc:
            self.agents = []
        if self.render_mode == "human":
            self.render()
        return obs, rew, terminations, truncations, infos

    def state(self) -> np.ndarray:
        """Global state, float32 [4 + 8N + J] (layout in the module docstring)."""
        if self._core_state is None:
            raise ValueError("call reset() before state()")
        return global_state(self.sim, self._core_state, self._obs32)[0].cpu().numpy()

    # -- rendering ------------------------------------------------------------------------------------------

    def render(self):
        if self.render_mode is None:
            return None
        _require_matplotlib()
        import matplotlib

        if self.render_mode == "rgb_array":
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        if self._fig is None:
            self._fig, _ = plt.subplots(1, 2, figsize=(10, 4))
        fig = self._fig
        ax_v, ax_a = fig.axes
        ax_v.clear()
        ax_a.clear()
        if self._last is not None:
            v, act = self._last
            names = self.sim.node_names
        elif self._core_state is not None:  # after reset: the idle power flow at the load nodes
            v, act = self._core_state.v_node_pu[0].detach().cpu().numpy(), None
            names = self.sim.load_node_names
        else:
            v, act, names = None, None, []
        if v is not None:
            phases = np.array([int(nm.rsplit(".", 1)[1]) if "." in nm else 0 for nm in names])
            for ph, label in ((1, "phase A"), (2, "phase B"), (3, "phase C")):
                idx = np.flatnonzero(phases == ph)
                ax_v.plot(idx, v[idx], ".", label=label, markersize=3)
            ax_v.legend(loc="best", fontsize=7)
        cfg = self.sim.config
        for lim in (cfg.v_min_pu, cfg.v_max_pu):
            ax_v.axhline(lim, color="k", linestyle="--", linewidth=0.8)
        ax_v.set_xlabel("feeder node (index)")
        ax_v.set_ylabel("voltage, pu")
        types = list(self.sim.agent_slices)
        if act is not None:
            jitter = np.random.default_rng(0).uniform(-0.25, 0.25, act.shape[0])
            for k, sl in enumerate(self.sim.agent_slices.values()):
                ax_a.plot(k + jitter[sl], act[sl], ".", markersize=2, alpha=0.5)
        ax_a.set_xticks(range(len(types)))
        ax_a.set_xticklabels(types)
        ax_a.set_ylim(-1.05, 1.05)
        ax_a.set_ylabel("action")
        t = 0 if self._core_state is None else self._core_state.t
        fig.suptitle(f"step {t} of {self.sim.n_steps}")
        fig.tight_layout()
        fig.canvas.draw()
        if self.render_mode == "rgb_array":
            return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
        plt.pause(1.0 / self.metadata["render_fps"])
        return None

    def close(self) -> None:
        if self._fig is not None:
            import matplotlib.pyplot as plt

            plt.close(self._fig)
            self._fig = None

    def __getstate__(self):
        d = self.__dict__.copy()
        d["_fig"] = None
        return d

    def __repr__(self) -> str:
        return f"GridEdgeParallelEnv({self.sim!r}, split={self.split!r}, {self.reward_config})"


def parallel_env(**cfg) -> GridEdgeParallelEnv:
    """The PettingZoo ParallelEnv (keyword arguments: the module docstring's Arguments)."""
    return GridEdgeParallelEnv(**cfg)


def raw_env(**cfg):
    """The AEC environment without PettingZoo's order-enforcing wrapper (``parallel_to_aec_wrapper``)."""
    return parallel_to_aec_wrapper(parallel_env(**cfg))


def env(**cfg):
    """The AEC environment (PettingZoo's ``parallel_to_aec``: order enforcing)."""
    return OrderEnforcingWrapper(raw_env(**cfg))


def bench_parallel_env(steps: int = 144, seed: int = 0, **cfg) -> dict:
    """Steps per second of the PettingZoo parallel adapter (for ``gridedge bench env``).

    Builds ``parallel_env(**cfg)`` (default: the full task) and runs ``steps`` calls of ``env.step`` with
    pre-drawn uniform random actions, resetting (seeds ``seed``, ``seed + 1``, ...) whenever an episode ends.
    Each step covers all agents: parsing the action dict, one core step, building the five output dicts.
    Drawing the actions and the resets are not timed (``reset_s`` reports the mean reset).

    Returns:
        ``{"feeder", "n_agents", "steps", "steps_per_episode", "build_s", "reset_s", "steps_per_s",
        "agent_steps_per_s", "torch_threads"}``; ``steps_per_s`` is ``steps`` over the total stepping time.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    t0 = time.perf_counter()
    e = parallel_env(**cfg)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    n_steps = e.sim.n_steps
    acts = rng.uniform(-1.0, 1.0, size=(n_steps, len(e.possible_agents), 1)).astype(np.float32)
    plans = [dict(zip(e.possible_agents, acts[k], strict=True)) for k in range(n_steps)]
    step_s, reset_s, resets, done = 0.0, 0.0, 0, 0
    while done < steps:
        t0 = time.perf_counter()
        e.reset(seed=seed + resets)
        reset_s += time.perf_counter() - t0
        resets += 1
        chunk = min(n_steps, steps - done)
        t0 = time.perf_counter()
        for k in range(chunk):
            e.step(plans[k])
        step_s += time.perf_counter() - t0
        done += chunk
    cfg_feeder = e.sim.config.feeder
    return {
        "feeder": cfg_feeder if isinstance(cfg_feeder, str) else cfg_feeder.name,
        "n_agents": e.sim.n_agents,
        "steps": steps,
        "steps_per_episode": n_steps,
        "build_s": build_s,
        "reset_s": reset_s / resets,
        "steps_per_s": steps / step_s,
        "agent_steps_per_s": steps * e.sim.n_agents / step_s,
        "torch_threads": torch.get_num_threads(),
    }
