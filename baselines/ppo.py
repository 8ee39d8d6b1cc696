"""IPPO and MAPPO: proximal policy optimisation with one actor per agent, on the batched environment.

Both train N independent decentralised actors (each agent's own MLP on its own local observation, stored as
stacked weights: `gradmap_agent.networks.StackedMLPPolicy`) from the per-agent rewards of
`gridedge_env.adapters.batched.BatchedEnv` (B one-day episodes at once, torch tensors; the same
observations and rewards as the PettingZoo adapter). They differ in the critic only:

- **IPPO** (``centralized_critic=False``): agent i's critic ``V_i(o_i)`` is its own MLP on its own
  observation (stacked like the actors);
- **MAPPO** (``centralized_critic=True``): one critic on the global state ``s`` (`BatchedEnv.global_state`:
  the shared features, every agent's local features and every load node's voltage) whose last layer has N
  outputs, one value ``V_i(s)`` per agent (per-agent rewards need per-agent values; the trunk is shared).

Both learn GradMAP's Lagrangian (PPO-Lagrangian): agent i's reward is minus its own cost, its own
multiplier-weighted device violation, and its share of the network term (the multiplier-weighted
margin-tightened voltage violations of every node, shared among the agents in proportion to how strongly each
one's power moves that node's voltage: `network_shares`, `lagrangian_rewards`); the multipliers take GradMAP's
projected dual-ascent step (`gradmap_agent.losses.dual_update`) on the rollout's violations. A row whose power
flow failed costs every agent `PPOConfig.pf_failure_penalty` in place of its network share.

One iteration: roll out B training days with the stochastic actors (no gradient through the simulator);
per-agent GAE(gamma, lambda) advantages; ``epochs`` passes of ``minibatches`` Adam steps on the clipped
surrogate + value loss - entropy bonus, summed over agents (each agent's own terms drive its own weights);
the dual step; then the observation statistics fold in the rollout. Nothing loops over agents in Python.
``docs/ppo.md`` has the equations and the defaults; docs/results.md the measured numbers.

The run layer's loop (`gridedge_run.loop.train`) drives `PPOTrainer` as it drives GradMAP's trainer
(budget, checkpoints, metrics.csv, progress, divergence handling); the exported policies have GradMAP's
format, so `gradmap_agent.make_policy`, `gridedge_run.evaluate_policy` and ``gridedge evaluate DIR`` take them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from gradmap_agent.checkpoint import common_state, restore_common
from gradmap_agent.config import (
    LagrangianConfig,
    NormalizerConfig,
    OptimConfig,
    PolicyConfig,
    RunConfig,
    build_config,
    section,
)
from gradmap_agent.losses import (
    MULTIPLIER_FIELDS,
    Multipliers,
    clip_grad_norm_per_agent_,
    device_constraint_violation,
    dual_update,
    voltage_violation,
)
from gradmap_agent.networks import ObsNormalizer, StackedMLPPolicy, clone_tree, make_policy, rule_and_bounds, squash
from gradmap_agent.train import METRIC_FIELDS as GRADMAP_METRIC_FIELDS
from gradmap_agent.train import DivergenceError
from gridedge_env import powerflow
from gridedge_env.adapters.batched import BatchedEnv, global_state_bounds
from gridedge_env.core import OBS_DIM
from gridedge_env.metrics import METRIC_NAMES, RolloutMetrics, scored_voltages

__all__ = [
    "METRIC_FIELDS",
    "PPOConfig",
    "PPOTrainer",
    "gae",
    "ippo_config",
    "lagrangian_rewards",
    "make_policy",
    "mappo_config",
    "network_shares",
]

CHECKPOINT_FORMAT = "gridedge-ppo-checkpoint/3"

#: Columns of a PPO run's metrics.csv: GradMAP's rollout and evaluation columns, then PPO's own.
METRIC_FIELDS = (
    "iteration",
    "wall_s",
    "lr",
    *METRIC_NAMES,
    *MULTIPLIER_FIELDS,
    "reward",
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "policy_std",
    "grad_norm_mean",
    "env_steps_per_s",
    "agent_steps_per_s",
    "rollout_s",
    "update_s",
) + tuple(f for f in GRADMAP_METRIC_FIELDS if f.startswith("eval_"))

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class PPOConfig:
    """IPPO / MAPPO hyperparameters. Defaults suit IEEE-123 with 1,000 agents on a 2-core CPU."""

    run: RunConfig = section(RunConfig, checkpoint_every=10)
    """Budget, seed, checkpoints, periodic evaluation, failure limit."""
    optim: OptimConfig = section(OptimConfig, lr=1e-3, lr_schedule="linear", lr_decay_iterations=300, max_grad_norm=0.5)
    """Adam (learning rate 1e-3, linear decay to a tenth over the first 300 iterations: the default budget),
    gradient clipping (0.5 per agent; per shared network with `share_params`; the whole MAPPO critic as one)."""
    normalizer: NormalizerConfig = section(NormalizerConfig)
    """Running statistics of the observations (and of MAPPO's global state)."""
    policy: PolicyConfig = section(PolicyConfig, hidden=32, init_log_std=-0.5)
    """Every actor (width 32, initial log std -0.5); the IPPO critics and MAPPO's have `layers` hidden layers
    too."""
    lagrangian: LagrangianConfig = section(LagrangianConfig)
    """GradMAP's multipliers, margins, budgets and dual ascent (the rewards' weights)."""
    # --- algorithm ----------------------------------------------------------------------------------------
    centralized_critic: bool = False
    """False: IPPO (per-agent critics on local observations); True: MAPPO (a critic on the global state)."""
    share_params: bool = False
    """True: agents of the same device type share one actor (and, for IPPO, one critic); False: every
    agent has its own. Sharing is per type because the action means different things for each type and the
    observation does not say the type."""
    # --- rollout and reward -------------------------------------------------------------------------------
    num_envs: int = 16
    """B: training days simulated together per rollout (B x 48 environment steps per iteration)."""
    pf_failure_penalty: float = 1e4
    """$ per agent and step of a row whose power flow failed, in place of the agent's network share (the
    voltages of a failed solve mean nothing; never 0, so a failure is never free). 1e4 x 1,000 agents is the
    network term of IEEE-123's 278 nodes all 0.084 pu outside the tightened band at the initial multipliers."""
    gamma: float = 0.99
    """Discount per 30-minute step. The day is the episode: no bootstrap after its last step."""
    gae_lambda: float = 0.95
    """GAE's lambda."""
    scale_rewards: bool = True
    """Divide each agent's rewards by the running standard deviation of its discounted return."""
    # --- networks -----------------------------------------------------------------------------------------
    critic_hidden: int = 64
    """Hidden width of MAPPO's centralised critic."""
    # --- PPO update ---------------------------------------------------------------------------------------
    epochs: int = 4
    """Passes over each rollout."""
    minibatches: int = 4
    """Minibatches per pass (random (step, day) rows; every agent's sample of a row is in the same one)."""
    clip_coef: float = 0.2
    """PPO's clip on the probability ratio, 1 +- clip_coef."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    ent_coef: float = 1e-3
    """Weight of the entropy bonus (entropy of the Gaussian before the squash)."""
    normalize_advantages: bool = True
    """Standardise each agent's advantages over the rollout."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("num_envs", "critic_hidden", "epochs", "minibatches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 < self.pf_failure_penalty < float("inf"):
            problems.append(f"pf_failure_penalty must be finite and > 0, got {self.pf_failure_penalty}")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.clip_coef > 0:
            problems.append(f"clip_coef must be > 0, got {self.clip_coef}")
        for name in ("vf_coef", "ent_coef"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if problems:
            raise ValueError("invalid PPOConfig: " + "; ".join(problems))

    @property
    def method(self) -> str:
        """The method's name in run directories: "mappo" with the centralised critic, else "ippo"."""
        return "mappo" if self.centralized_critic else "ippo"


def _make_config(fields: dict, centralized_critic: bool) -> PPOConfig:
    if fields.get("centralized_critic", centralized_critic) != centralized_critic:
        raise ValueError(
            f"centralized_critic={fields['centralized_critic']!r} contradicts the method "
            f"({'mappo' if centralized_critic else 'ippo'}); train the other method instead"
        )
    return build_config(PPOConfig, {**fields, "centralized_critic": centralized_critic})


def ippo_config(**fields) -> PPOConfig:
    """IPPO: `PPOConfig` with per-agent critics on local observations."""
    return _make_config(fields, centralized_critic=False)


def mappo_config(**fields) -> PPOConfig:
    """MAPPO: `PPOConfig` with a critic on the global state."""
    return _make_config(fields, centralized_critic=True)


# ----------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over one finite-horizon episode (the value after the last step is 0).

    ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``, ``A_T = V_T = 0``.

    Args:
        rewards: [T, ...] rewards of steps 0..T-1 (any trailing shape, e.g. [T, B, N]).
        values: [T, ...] value estimates of the states before each step.
        gamma: Discount.
        lam: GAE's lambda.

    Returns:
        (advantages, returns = advantages + values), each [T, ...].
    """
    if rewards.shape != values.shape:
        raise ValueError(
            f"rewards and values must have the same shape, got {tuple(rewards.shape)} and {tuple(values.shape)}"
        )
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[0])
    next_advantage = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * next_value - values[t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[t] = next_advantage
        next_value = values[t]
    return advantages, advantages + values


def network_shares(sim, delta_kw: float = 1.0) -> torch.Tensor:
    """[n, N] share of node n's network term that agent i's reward carries; every row sums to 1.

    Agent i's weight at node n is how far its full power moves that node's voltage: the sensitivity
    ``|d|v_n| / dp_j|`` (pu per kW) at the agent's node j, at the feeder's nominal loads times ``load_scale``,
    times the agent's rated power ``p_max_kw``. Each node's weights are normalised over the agents, so the
    agents' shares add up to the node's term (a node no agent moves is shared equally). The sensitivities come
    from one batched power flow: a base row and one row per injection node with ``delta_kw`` more demand there.
    """
    c = sim.compiled
    n_inj = len(c.injection_node_names)
    extra = torch.eye(n_inj, dtype=sim.dtype, device=sim.device) * delta_kw
    demand = torch.cat([torch.zeros_like(extra[:1]), extra])  # [1 + J, J] kW
    # the simulator's own default tolerances per dtype (a float32 solve cannot reach 1e-10)
    tol = 1e-10 if sim.dtype == torch.float64 else 1e-6
    with torch.no_grad():
        r = powerflow.solve(
            c,
            load_p_kw=c.load_p_kw * sim.config.load_scale,
            load_q_kvar=c.load_q_kvar * sim.config.load_scale,
            injection_p_kw=demand,
            injection_q_kvar=torch.zeros_like(demand),
            tol=tol,
            max_iter=sim.config.pf_max_iter,
        )
    if not bool(r.converged.all()):
        raise ValueError("the power flow for the network shares' voltage sensitivities did not converge")
    sensitivity = (r.v_mag_pu[1:] - r.v_mag_pu[:1]).abs().T / delta_kw  # [n, J] pu per kW
    rated_kw = torch.empty(sim.n_agents, dtype=sim.dtype, device=sim.device)
    for name, sl in sim.agent_slices.items():
        rated_kw[sl] = sim.params[name].p_max_kw
    weight = sensitivity[:, sim.agent_node] * rated_kw  # [n, N]
    total = weight.sum(dim=1, keepdim=True)
    equal = torch.full_like(weight, 1.0 / sim.n_agents)
    return torch.where(total > 0, weight / total.clamp_min(torch.finfo(sim.dtype).tiny), equal)


def lagrangian_rewards(
    result,
    t: int,
    multipliers: Multipliers,
    shares: torch.Tensor,
    config: LagrangianConfig,
    v_min_pu: float,
    v_max_pu: float,
    pf_failure_penalty: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-agent rewards of one step: minus each agent's share of GradMAP's Lagrangian.

    ``r[b,i] = -( c[b,i] + lam[i] d[b,i] + sum_n shares[n,i] (mu[t,n] w[b,n] + rho/2 w[b,n]^2) )`` with ``w``
    the margin-tightened voltage violation (`gradmap_agent.losses.voltage_violation`) and ``d`` the
    device-constraint violation (`gradmap_agent.losses.device_constraint_violation`: the terminal shortfall
    included on the last step). Summed over the agents this is the row's term of GradMAP's Lagrangian. In a
    row whose power flow failed the network share is ``pf_failure_penalty`` per agent instead.

    Args:
        result: The core's `StepResult` of step ``t``.
        t: Step index (time of day).
        multipliers: Device [N] and network [T, n] multipliers.
        shares: [n, N] `network_shares`.
        config: The multipliers' `LagrangianConfig` (margin, quadratic weight rho).
        v_min_pu, v_max_pu: The voltage band.
        pf_failure_penalty: $ per agent of a failed row.

    Returns:
        ``(reward [B, N], device violation [B, N], voltage violation w [B, n])``: what the dual step takes, as
        GradMAP's `step_lagrangian` returns them (a failed row's nodes scored at 0 pu: voltage collapse).
    """
    ok = result.converged[:, None]
    v = scored_voltages(result.v_mag_pu, result.converged)
    w = voltage_violation(v, v_min_pu, v_max_pu, config.voltage_margin_pu)
    node_term = multipliers.voltage[t].to(w.dtype) * w + 0.5 * config.voltage_quadratic * w * w  # [B, n] $
    network = torch.where(ok, node_term @ shares, pf_failure_penalty)  # [B, N] $
    dev = device_constraint_violation(result, multipliers)
    reward = -(result.cost + multipliers.device.to(w.dtype) * dev + network)
    return reward, dev, w


def _gaussian_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(u; mean, exp(log_std)^2) of the pre-squash sample ``u``. The squash's log-Jacobian depends on ``u``
    and the observation only, the same for the old and new policy, so it cancels in the ratio and is left out."""
    return -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - _HALF_LOG_2PI


# ----------------------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------------------


class _AgentNets(nn.Module):
    """A `StackedMLPPolicy` with one parameter slice per agent, or per group of agents that share it.

    ``group`` [N] maps every agent to its slice (None: slice i is agent i). Shared slices are gathered into a
    per-agent stack for each call and evaluated by a parameterless copy of the per-agent network
    (`torch.func.functional_call`), so gradients of agents of a group add up in their one slice.
    """

    def __init__(
        self,
        n_agents: int,
        obs_dim: int,
        hidden: int,
        layers: int,
        init_log_std: float,
        group: torch.Tensor | None,
        generator: torch.Generator,
        dtype: torch.dtype,
    ):
        super().__init__()
        n_slices = n_agents if group is None else int(group.max()) + 1
        self.net = StackedMLPPolicy(
            n_slices, obs_dim, hidden=hidden, layers=layers, init_log_std=init_log_std, generator=generator, dtype=dtype
        )
        self.group = group
        # same shapes per agent; only its structure is used (its weights are never read)
        self._per_agent = (
            None
            if group is None
            else StackedMLPPolicy(n_agents, obs_dim, hidden, layers, dtype=dtype).requires_grad_(False)
        )

    def per_agent_state(self) -> dict[str, torch.Tensor]:
        """Weights with one slice per agent (shared slices repeated): what `make_policy` takes."""
        state = self.net.state_dict()
        if self.group is not None:
            state = {k: v[self.group] for k, v in state.items()}
        return {k: v.detach().clone() for k, v in state.items()}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's two outputs [B, N] each, for normalised observations [B, N, d]."""
        if self.group is None:
            return self.net(x)
        params = {k: v[self.group] for k, v in self.net.named_parameters()}
        return torch.func.functional_call(self._per_agent, params, (x,))


def _device_type_group(sim) -> torch.Tensor:
    """[N] index of every agent's device type among the types present (the slices of `share_params`)."""
    present = [name for name, sl in sim.agent_slices.items() if sl.stop > sl.start]
    return torch.tensor([present.index(t) for t in sim.agent_type], dtype=torch.int64, device=sim.device)


class _CentralCritic(nn.Module):
    """MAPPO's critic: an MLP on the normalised global state [B, G] with one value output per agent [B, N]."""

    def __init__(self, state_dim: int, n_agents: int, hidden: int, layers: int, dtype: torch.dtype):
        super().__init__()
        sizes = [state_dim] + [hidden] * layers
        body = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            body += [nn.Linear(fan_in, fan_out, dtype=dtype), nn.Tanh()]
        self.mlp = nn.Sequential(*body, nn.Linear(hidden, n_agents, dtype=dtype))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.mlp(state)


# ----------------------------------------------------------------------------------------------------------
# The trainer (driven by gridedge_run.loop.train)
# ----------------------------------------------------------------------------------------------------------


class PPOTrainer:
    """Everything one IPPO/MAPPO run holds and one iteration of it; `gridedge_run.loop.train` drives it
    (budget, checkpoints, metrics.csv, progress, divergence handling, export).

    Args:
        sim: The simulator (`gridedge_env.make_sim`); the training environment is a `BatchedEnv` of the
            same configuration on the "train" days.
        config: `PPOConfig`.
    """

    metric_fields = METRIC_FIELDS

    def __init__(self, sim, config: PPOConfig):
        if not isinstance(config, PPOConfig):
            raise ValueError(f"PPOTrainer needs a PPOConfig, got {type(config).__name__}")
        if config.minibatches > config.num_envs * sim.n_steps:
            raise ValueError(
                f"invalid PPOConfig: minibatches must be at most the rollout's rows (num_envs x steps "
                f"= {config.num_envs} x {sim.n_steps}), got {config.minibatches}"
            )
        self.sim, self.config = sim, config
        sim_fields = {f.name: getattr(sim.config, f.name) for f in dataclasses.fields(sim.config)}
        # the environment's own reward is not used: the rewards are the Lagrangian's (`lagrangian_rewards`)
        self.env = BatchedEnv(config.num_envs, split="train", **sim_fields)
        n = sim.n_agents
        lag = config.lagrangian
        self.multipliers = Multipliers.for_sim(
            sim, device_init=lag.device_multiplier_init, voltage_init=lag.voltage_multiplier_init
        )
        self.shares = network_shares(sim)
        self.pdtype = config.policy.dtype
        self.gen = torch.Generator().manual_seed(int(config.run.seed))  # then: rollout seeds, noise, minibatches
        group = _device_type_group(sim) if config.share_params else None
        pol = config.policy
        self.actor = _AgentNets(n, OBS_DIM, pol.hidden, pol.layers, pol.init_log_std, group, self.gen, self.pdtype)
        self.actor.to(sim.device)
        self.normalizer = ObsNormalizer.from_config(n, OBS_DIM, config.normalizer, device=sim.device)
        if config.centralized_critic:
            state_dim = len(global_state_bounds(sim)[0])
            with torch.random.fork_rng():  # nn.Linear initialises from the global RNG: seed it, then restore it
                torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=self.gen)))
                self.critic = _CentralCritic(state_dim, n, config.critic_hidden, config.policy.layers, self.pdtype)
            self.state_normalizer = ObsNormalizer.from_config(1, state_dim, config.normalizer, device=sim.device)
        else:
            # the value is the network's first output (its second, a log std, is unused)
            self.critic = _AgentNets(n, OBS_DIM, pol.hidden, pol.layers, 0.0, group, self.gen, self.pdtype)
            self.state_normalizer = None
        self.critic.to(sim.device)
        # running statistics of each agent's discounted return (reward scaling); 1e-3 keeps near-constant
        # returns from being blown up
        self.return_stats = ObsNormalizer(n, 1, std_min=1e-3, device=sim.device)
        self.optimizer = config.optim.adam([*self.actor.parameters(), *self.critic.parameters()])
        self.iteration = 0
        self.elapsed_s = 0.0
        self.history: list[dict] = []

    # --- checkpoints ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        clone = lambda d: {k: v.detach().clone() for k, v in d.items()}  # noqa: E731
        return {
            **common_state(self, CHECKPOINT_FORMAT),
            "policy": self.actor.per_agent_state(),  # exported as policies.pt by the train loop
            "normalizer": self.normalizer.state_dict(),
            "actor": clone(self.actor.state_dict()),
            "critic": clone(self.critic.state_dict()),
            "optimizer": clone_tree(self.optimizer.state_dict()),
            "state_normalizer": None if self.state_normalizer is None else self.state_normalizer.state_dict(),
            "return_stats": self.return_stats.state_dict(),
            "multipliers": self.multipliers.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        restore_common(self, state, CHECKPOINT_FORMAT)
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.normalizer.load_state_dict(state["normalizer"])
        if self.state_normalizer is not None:
            self.state_normalizer.load_state_dict(state["state_normalizer"])
        self.return_stats.load_state_dict(state["return_stats"])
        self.multipliers.load_state_dict(state["multipliers"])

    def params(self) -> dict:
        """The trained actors, one slice per agent, and the normaliser (what `make_policy` takes)."""
        return {"policy": self.actor.per_agent_state(), "normalizer": self.normalizer.state_dict()}

    # --- networks -------------------------------------------------------------------------------------------

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        """Normalised observations [..., N, d] in the networks' dtype."""
        return self.normalizer.normalize(obs.to(torch.float64)).to(self.pdtype)

    def value(self, x: torch.Tensor, global_state: torch.Tensor | None) -> torch.Tensor:
        """Per-agent values [M, N]: IPPO from the normalised observations ``x`` [M, N, d] only, MAPPO from the
        raw global state [M, G] only."""
        if self.state_normalizer is None:
            return self.critic(x)[0]
        s = self.state_normalizer.normalize(global_state.to(torch.float64)[:, None, :])[:, 0]
        return self.critic(s.to(self.pdtype))

    # --- one iteration ---------------------------------------------------------------------------------------

    def rollout(self) -> dict:
        """B training days with the stochastic actors (no gradient), per-agent Lagrangian rewards, the
        violations for the dual step and rollout metrics."""
        env, sim, cfg = self.env, self.sim, self.config
        batch, n_steps, n = cfg.num_envs, sim.n_steps, sim.n_agents
        reset_seed = int(torch.randint(0, 2**62, (1,), generator=self.gen))
        noise = torch.randn((n_steps, batch, n), generator=self.gen, dtype=torch.float64)
        noise = noise.to(dtype=self.pdtype, device=sim.device)
        obs = env.reset(seed=reset_seed)
        raw_obs, xs, us, logps, states, rewards, devs, ws = [], [], [], [], [], [], [], []
        metrics = RolloutMetrics(sim)
        with torch.no_grad():
            for t in range(n_steps):
                if self.state_normalizer is not None:
                    states.append(env.global_state())
                x = self.normalize(obs)
                mean, log_std = self.actor(x)
                u = mean + log_std.exp() * noise[t]
                raw_obs.append(obs)
                xs.append(x)
                us.append(u)
                logps.append(_gaussian_log_prob(u, mean, log_std))
                obs, _, _, _, info = env.step(squash(u, rule_and_bounds(obs).to(u.dtype)))
                reward, dev, w = lagrangian_rewards(
                    info["result"],
                    t,
                    self.multipliers,
                    self.shares,
                    cfg.lagrangian,
                    sim.config.v_min_pu,
                    sim.config.v_max_pu,
                    cfg.pf_failure_penalty,
                )
                rewards.append(reward)
                devs.append(dev)
                ws.append(w)
                metrics.add(info["result"])
        if metrics.failures > cfg.run.max_pf_failure_share * batch * n_steps:
            raise DivergenceError(
                f"{metrics.failures} of {batch * n_steps} power flows failed at iteration "
                f"{self.iteration} (more than max_pf_failure_share={cfg.run.max_pf_failure_share})"
            )
        reward = torch.stack(rewards).to(self.pdtype)  # [T, B, N]
        return {
            "raw_obs": torch.stack(raw_obs),
            "x": torch.stack(xs),
            "u": torch.stack(us),
            "logp": torch.stack(logps),
            "state": torch.stack(states) if states else None,
            "reward": reward,
            "device_violation": torch.stack(devs),  # [T, B, N]
            "voltage_violation": torch.stack(ws),  # [T, B, n]
            "stats": {**metrics.standard(batch), "reward": float(reward.mean())},
        }

    def scaled_rewards(self, reward: torch.Tensor) -> torch.Tensor:
        """Rewards [T, B, N] divided by each agent's running std of the discounted return (this rollout's
        returns folded in first), when `scale_rewards`."""
        if not self.config.scale_rewards:
            return reward
        returns = torch.zeros_like(reward)
        running = torch.zeros_like(reward[0])
        for t in range(reward.shape[0]):
            running = self.config.gamma * running + reward[t]
            returns[t] = running
        self.return_stats.update(returns[..., None])
        return reward / self.return_stats.std[:, 0].to(reward.dtype)

    def update(self, roll: dict, lr: float) -> dict:
        """GAE, then `epochs` x `minibatches` Adam steps on the PPO loss summed over agents."""
        cfg = self.config
        n_steps, batch, n = roll["u"].shape
        rows = n_steps * batch
        x = roll["x"].reshape(rows, n, -1)
        state = None if roll["state"] is None else roll["state"].reshape(rows, -1)
        u, logp_old = roll["u"].reshape(rows, n), roll["logp"].reshape(rows, n)
        with torch.no_grad():
            values = self.value(x, state).reshape(n_steps, batch, n)
        advantages, returns = gae(self.scaled_rewards(roll["reward"]), values, cfg.gamma, cfg.gae_lambda)
        advantages, returns = advantages.reshape(rows, n), returns.reshape(rows, n)
        if cfg.normalize_advantages:
            mean = advantages.mean(dim=0)
            std = ((advantages - mean) ** 2).mean(dim=0).sqrt()
            advantages = (advantages - mean) / (std + 1e-8)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

        # summed on the networks' device, read once after the updates (no host round trip per minibatch)
        sums = dict.fromkeys(
            ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm_mean"),
            torch.zeros((), dtype=torch.float64, device=x.device),
        )
        n_updates = 0
        for _ in range(cfg.epochs):
            order = torch.randperm(rows, generator=self.gen).to(x.device)
            for part in range(cfg.minibatches):
                mb = order[part * rows // cfg.minibatches : (part + 1) * rows // cfg.minibatches]
                mean, log_std = self.actor(x[mb])
                log_ratio = _gaussian_log_prob(u[mb], mean, log_std) - logp_old[mb]
                ratio = log_ratio.exp()
                adv = advantages[mb]
                clipped = ratio.clamp(1.0 - cfg.clip_coef, 1.0 + cfg.clip_coef)
                policy_loss = -torch.minimum(adv * ratio, adv * clipped).mean(dim=0)  # [N]
                value_loss = (0.5 * (self.value(x[mb], None if state is None else state[mb]) - returns[mb]) ** 2).mean(
                    dim=0
                )
                entropy = (log_std + 0.5 + _HALF_LOG_2PI).mean(dim=0)
                loss = (policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy).sum()
                if not bool(torch.isfinite(loss.detach())):
                    raise DivergenceError(f"non-finite PPO loss at iteration {self.iteration}")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norms = self.clip_gradients()
                self.optimizer.step()
                with torch.no_grad():
                    sums["policy_loss"] = sums["policy_loss"] + policy_loss.mean()
                    sums["value_loss"] = sums["value_loss"] + value_loss.mean()
                    sums["entropy"] = sums["entropy"] + entropy.mean()
                    sums["approx_kl"] = sums["approx_kl"] + (ratio - 1.0 - log_ratio).mean()
                    sums["clip_fraction"] = (
                        sums["clip_fraction"] + ((ratio - 1.0).abs() > cfg.clip_coef).to(ratio.dtype).mean()
                    )
                    sums["grad_norm_mean"] = sums["grad_norm_mean"] + norms.mean()
                n_updates += 1
        for p in [*self.actor.parameters(), *self.critic.parameters()]:
            if not bool(torch.isfinite(p.detach()).all()):
                raise DivergenceError(f"non-finite network parameters after the update of iteration {self.iteration}")
        stats = {k: float(v) / n_updates for k, v in sums.items()}
        with torch.no_grad():
            residual = returns - values.reshape(rows, n)
            stats["explained_variance"] = float(1.0 - residual.var() / returns.var().clamp_min(1e-12))
            stats["policy_std"] = float(self.actor(x[:batch])[1].exp().mean())
        return stats

    def clip_gradients(self) -> torch.Tensor:
        """Clip each agent's (or shared slice's) actor and IPPO-critic gradient separately, MAPPO's critic as
        one network; returns the [N or groups] actor gradient norms before clipping."""
        norms = clip_grad_norm_per_agent_(list(self.actor.net.parameters()), self.config.optim.max_grad_norm)
        if isinstance(self.critic, _AgentNets):
            clip_grad_norm_per_agent_(list(self.critic.net.parameters()), self.config.optim.max_grad_norm)
        elif self.config.optim.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.critic.parameters(), self.config.optim.max_grad_norm)
        if not bool(torch.isfinite(norms).all()):
            raise DivergenceError(f"non-finite policy gradient at iteration {self.iteration}")
        return norms

    def dual_step(self, roll: dict) -> None:
        """PPO-Lagrangian: GradMAP's projected dual ascent (`gradmap_agent.losses.dual_update`) on the
        rollout's violations ([T, B, N] device, [T, B, n] margin-tightened voltage, a failed row counted as
        voltage collapse)."""
        dual_update(self.multipliers, roll["device_violation"], roll["voltage_violation"], self.config.lagrangian)

    def iterate(self) -> dict:
        """One full iteration; returns its metrics row (without wall_s and eval columns)."""
        cfg = self.config
        lr = cfg.optim.lr_at(self.iteration)
        t0 = time.perf_counter()
        roll = self.rollout()
        t1 = time.perf_counter()
        stats = self.update(roll, lr)
        self.dual_step(roll)
        self.normalizer.update(roll["raw_obs"])
        if self.state_normalizer is not None:
            self.state_normalizer.update(roll["state"][..., None, :])
        t2 = time.perf_counter()
        env_steps_per_s = cfg.num_envs * self.sim.n_steps / (t2 - t0)  # rollout and update together
        return {
            "iteration": self.iteration + 1,
            "lr": lr,
            **roll["stats"],
            **self.multipliers.summary(),
            **stats,
            "env_steps_per_s": env_steps_per_s,
            "agent_steps_per_s": env_steps_per_s * self.sim.n_agents,
            "rollout_s": t1 - t0,
            "update_s": t2 - t1,
        }
