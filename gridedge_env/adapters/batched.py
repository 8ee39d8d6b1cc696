"""Batched interface: B one-day episodes at once, torch tensors in and out (fast on-policy training).

`BatchedEnv` holds one core `State` of batch size B and returns exactly the observations and rewards that
the PettingZoo adapter (`gridedge_env.adapters.pettingzoo_env`) returns for each of its rows: both use the
helpers of this module (`clip_obs`, `agent_rewards`, `global_state`). All rows share the clock (one day,
``sim.n_steps`` steps), so they truncate together; there is no termination and no auto-reset: call
`BatchedEnv.reset` after the step that returns ``truncated``.

Shapes: B rows, N agents, D = ``OBS_DIM`` = 10 observation features, n feeder nodes, J load nodes.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from gridedge_env.core import OBS_NAMES, Sim, State, StepResult, make_sim
from gridedge_env.scenarios import split_days

__all__ = [
    "NET_SCOPES",
    "OBS_HIGH",
    "OBS_LOW",
    "BatchedEnv",
    "RewardConfig",
    "agent_rewards",
    "clip_obs",
    "global_state",
    "global_state_bounds",
    "split_config",
]

#: Bounds of every observation feature (the observation space of every agent). Generous: a feasible,
#: converged step stays well inside them; anything outside (e.g. a diverged power flow) is clipped to them,
#: and NaN is mapped to 0. Units as in ``docs/simulator.md``.
OBS_BOUNDS: dict[str, tuple[float, float]] = {
    "time_sin": (-1.0, 1.0),
    "time_cos": (-1.0, 1.0),
    "price": (0.0, 10.0),  # price / 0.40 $/kWh: up to 4 $/kWh
    "t_outdoor": (-5.0, 5.0),  # outdoor temperature / 20 C: -100..100 C
    "v_node": (-20.0, 20.0),  # (v - 1) / 0.05: 0..2 pu
    "node_load": (0.0, 100.0),  # kW per kW of spot load
    "node_pv": (0.0, 100.0),  # kW per kW of spot load
    "own_state": (-10.0, 10.0),  # battery SOC share [0, 1], heat pump band position [-1, 1], gen. [0, 1]
    "own_reference": (-10.0, 10.0),  # the same scale at the start of the day (generators: 0)
    "rule_action": (-1.0, 1.0),  # an action
    "action_low": (-1.0, 1.0),  # actions
    "action_high": (-1.0, 1.0),
}
assert tuple(OBS_BOUNDS) == OBS_NAMES
OBS_LOW = np.array([OBS_BOUNDS[k][0] for k in OBS_NAMES], dtype=np.float32)
OBS_HIGH = np.array([OBS_BOUNDS[k][1] for k in OBS_NAMES], dtype=np.float32)

#: Scopes of the network term of each agent's reward.
NET_SCOPES = ("node", "feeder")


@dataclass(frozen=True)
class RewardConfig:
    """Per-agent reward ``-(cost_i + w_dev * device_violation_i + w_net * network_term_i)``."""

    w_dev: float = 10.0
    """Weight of the agent's own device violation ($ per kW projected away or per K outside the band)."""
    w_net: float = 1000.0
    """Weight of the network term ($ per pu of voltage violation)."""
    net_scope: str = "node"
    """"node": the voltage violation at the agent's own node (pu); "feeder": the feeder's total voltage
    violation (sum over all n nodes, pu), the same for every agent."""

    def __post_init__(self) -> None:
        if self.net_scope not in NET_SCOPES:
            raise ValueError(f"net_scope must be one of {NET_SCOPES}, got {self.net_scope!r}")
        for name in ("w_dev", "w_net"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


_REWARD_KEYS = {f.name for f in dataclasses.fields(RewardConfig)}


def split_config(cfg: dict) -> tuple[dict, RewardConfig, dict]:
    """Split keyword arguments into (simulator config, `RewardConfig`, remaining adapter options)."""
    from gridedge_env.core import SimConfig

    sim_keys = {f.name for f in dataclasses.fields(SimConfig)}
    sim_cfg = {k: v for k, v in cfg.items() if k in sim_keys}
    reward = RewardConfig(**{k: v for k, v in cfg.items() if k in _REWARD_KEYS})
    rest = {k: v for k, v in cfg.items() if k not in sim_keys and k not in _REWARD_KEYS}
    return sim_cfg, reward, rest


def reset_option_days(options) -> list[int] | None:
    """The day an adapter's ``reset(options={"day": d})`` asks for (None: drawn).

    A malformed ``day`` or options that are not a dict are a ValueError; other keys are not used and get a
    warning that names them (an error would fail PettingZoo's own API test, which passes ``{"options": 1}``).
    """
    if options is None:
        return None
    if not isinstance(options, dict):
        raise ValueError(f"reset options must be a dict, got {type(options).__name__}")
    unknown = sorted(map(str, set(options) - {"day"}))
    if unknown:
        warnings.warn(f"reset option(s) {unknown} are not used; the only option is 'day'", stacklevel=3)
    if "day" not in options:
        return None
    day = options["day"]
    if isinstance(day, bool) or not isinstance(day, int | np.integer):
        raise ValueError(f"reset option 'day' must be an integer day index, got {day!r}")
    return [int(day)]


def agent_node_index(sim: Sim) -> torch.Tensor:
    """[N] index of every agent's node into ``sim.node_names`` (the columns of ``voltage_violation``)."""
    pos = {name: i for i, name in enumerate(sim.node_names)}
    return torch.tensor([pos[nm] for nm in sim.agent_node_names], dtype=torch.int64, device=sim.device)


def clip_obs(obs: torch.Tensor) -> torch.Tensor:
    """Observations [..., D] as float32 inside their bounds (`OBS_BOUNDS`; NaN -> 0), detached."""
    obs = torch.nan_to_num(obs.detach().to(torch.float32), nan=0.0)
    low = torch.as_tensor(OBS_LOW, device=obs.device)
    high = torch.as_tensor(OBS_HIGH, device=obs.device)
    return torch.minimum(torch.maximum(obs, low), high)


def network_terms(result: StepResult, node_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(own-node voltage violation [B, N], feeder total voltage violation [B]), pu."""
    vv = result.voltage_violation
    return vv[:, node_index], vv.sum(dim=1)


def agent_rewards(result: StepResult, node_index: torch.Tensor, reward: RewardConfig) -> torch.Tensor:
    """Per-agent rewards [B, N] (same dtype as the simulator; differentiable w.r.t. the actions)."""
    own, feeder = network_terms(result, node_index)
    net = own if reward.net_scope == "node" else feeder[:, None].expand_as(own)
    return -(result.cost + reward.w_dev * result.device_violation + reward.w_net * net)


def global_state(sim: Sim, state: State, obs: torch.Tensor) -> torch.Tensor:
    """Global state [B, 4 + 8N + J] float32 for centralised critics.

    Layout: the 4 features every agent shares (time_sin, time_cos, price, t_outdoor); then for every agent
    in ``sim.agents`` order its 8 local features (v_node, node_load, node_pv, own_state, own_reference,
    rule_action, action_low, action_high), agent-major; then the voltage of every load node
    (``sim.load_node_names``) as (v - 1) / 0.05.
    ``obs`` is the clipped observation [B, N, D] of ``state``.
    """
    batch = obs.shape[0]
    v = torch.nan_to_num(((state.v_node_pu.detach() - 1.0) / 0.05).to(torch.float32), nan=0.0)
    v = v.clamp(float(OBS_LOW[4]), float(OBS_HIGH[4]))
    return torch.cat([obs[:, 0, :4], obs[:, :, 4:].reshape(batch, -1), v], dim=1)


def global_state_bounds(sim: Sim) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) float32 arrays of `global_state`."""
    n, j = sim.n_agents, sim.n_load_nodes
    parts = lambda b: np.concatenate([b[:4], np.tile(b[4:], n), np.full(j, b[4])]).astype(np.float32)  # noqa: E731
    return parts(OBS_LOW), parts(OBS_HIGH)


class BatchedEnv:
    """B episodes of the multi-agent task as torch tensors (no per-agent Python work).

    Args:
        num_envs: Batch size B.
        split: Days (and household profiles) to draw episodes from: "train", "validation", "test" or "all".
        w_dev, w_net, net_scope: The reward (`RewardConfig`).
        **cfg: Simulator options (`make_sim`; default the full task: IEEE-123, 1,000 agents).

    Attributes:
        sim: The `Sim`; ``sim.agents`` is the order of the agent axis.
        state: The current core `State` (None before the first reset).
    """

    def __init__(self, num_envs: int = 1, *, split: str = "train", **cfg) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        sim_cfg, self.reward_config, rest = split_config(cfg)
        if rest:
            raise ValueError(f"unknown option(s) {sorted(rest)}")
        self.num_envs = int(num_envs)
        self.split = split
        split_days(split)  # raises ValueError naming an unknown split
        self.sim = make_sim(**sim_cfg)
        self.agents = list(self.sim.agents)
        self.n_agents = self.sim.n_agents
        self.node_index = agent_node_index(self.sim)
        self.state: State | None = None
        self._rng = np.random.default_rng()

    def reset(self, seed: int | None = None, days=None) -> torch.Tensor:
        """Start B new episodes; returns observations [B, N, D] float32.

        ``seed`` seeds this reset; without one, the seed is drawn from the generator of the last seeded reset
        (or from fresh entropy before any), so a seeded sequence of resets is reproducible.
        """
        if seed is not None:
            self._rng = np.random.default_rng(int(seed))
            episode_seed = int(seed)
        else:
            episode_seed = int(self._rng.integers(2**31 - 1))
        self.state = self.sim.reset(
            None if days is not None else self.num_envs, seed=episode_seed, split=self.split, days=days
        )
        return clip_obs(self.state.obs)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """One step of every row.

        Args:
            actions: [B, N] or [B, N, 1] in [-1, 1] (clipped by the core), ``sim.agents`` order.

        Returns:
            (obs [B, N, D] float32, reward [B, N] float32, terminated [B, N] bool (always False),
            truncated [B, N] bool (all True on the last step), info). ``info`` holds [B, N] tensors
            ``cost``, ``device_violation``, ``v_node_pu``, ``node_voltage_violation``, [B] ``feeder_voltage_violation``
            and ``pf_converged``, and ``result``, the full `StepResult` (simulator dtype, with gradients).

        Raises:
            ValueError: Wrong shape, NaN or infinite actions, no reset yet or the episode is over; the state
                is untouched.
        """
        if self.state is None:
            raise ValueError("call reset() before step()")
        if isinstance(actions, torch.Tensor) and actions.dim() == 3 and actions.shape[-1] == 1:
            actions = actions[..., 0]
        result = self.sim.step(self.state, actions)
        self.state = result.state
        rewards = agent_rewards(result, self.node_index, self.reward_config)
        own, feeder = network_terms(result, self.node_index)
        shape = rewards.shape
        info = {
            "cost": result.cost.detach(),
            "device_violation": result.device_violation.detach(),
            "v_node_pu": result.v_mag_pu.detach()[:, self.node_index],
            "node_voltage_violation": own.detach(),
            "feeder_voltage_violation": feeder.detach(),
            "pf_converged": result.converged,
            "result": result,
        }
        truncated = torch.full(shape, bool(result.truncated), dtype=torch.bool, device=rewards.device)
        terminated = torch.zeros(shape, dtype=torch.bool, device=rewards.device)
        return clip_obs(result.obs), rewards.detach().to(torch.float32), terminated, truncated, info

    def global_state(self) -> torch.Tensor:
        """[B, 4 + 8N + J] float32 global state (`global_state`)."""
        if self.state is None:
            raise ValueError("call reset() before state()")
        return global_state(self.sim, self.state, clip_obs(self.state.obs))
