"""GradMAP training loop (and GradMA, its K = 1 special case on the same code path).

One iteration:

1. **Rollout.** Reset B training days. At every step each agent's policy maps its own (normalised)
   observation and a stored standard-normal noise to ``a = tanh(mean + std * noise)``; the actions enter the
   differentiable core as leaf tensors (``requires_grad``), the observations are policy inputs (no gradient
   flows back through them into the policy), and the Lagrangian (`losses.step_lagrangian`) is summed.
2. **Exact environment gradient.** One ``backward()`` gives ``g = dL/da`` for every step and agent: the
   total derivative through costs, device dynamics, the implicit power-flow gradient, and all later states.
3. **Policy updates.** K Adam steps on the proximal surrogate `losses.proximal_surrogate` over the stored
   observations, noise, old actions and ``g``, with per-agent gradient clipping. K = 1 without trust region
   is GradMA (one update on the chain rule ``sum g * da/dtheta``).
4. **Dual ascent** on the multipliers with the rollout's violations; then the observation normaliser folds
   in the rollout's observations (it is frozen during the rollout and the K updates), and, with
   ``policy_average``, the moving average of the parameters takes a step.

``docs/gradmap.md`` has the equations and every design choice.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from gradmap_agent.losses import (
    Multipliers,
    clip_grad_norm_per_agent_,
    dual_update,
    proximal_surrogate,
    step_lagrangian,
)
from gradmap_agent.networks import ObsNormalizer, StackedMLPPolicy
from gradmap_agent.optim import LR_SCHEDULES, budget_progress, clone_tree, lr_at
from gridedge_env.core import AGENT_TYPES, OBS_DIM, sim_config_dict
from gridedge_env.episodes import reset_scenarios
from gridedge_env.metrics import RolloutMetrics
from gridedge_env.scenarios import split_days

__all__ = [
    "CHECKPOINT_FORMAT",
    "METRIC_FIELDS",
    "DivergenceError",
    "GradMAPConfig",
    "GradMAPTrainer",
    "check_fields",
    "gradma_config",
    "gradmap_config",
]

CHECKPOINT_FORMAT = "gridedge-gradmap-checkpoint/1"

@dataclass(frozen=True)
class GradMAPConfig:
    """GradMAP / GradMA hyperparameters. Defaults suit IEEE-123 with 1,000 agents on a 2-core CPU."""

    # --- budget -------------------------------------------------------------------------------------------
    iterations: int | None = 300
    """Number of rollouts (each one environment gradient); None: no limit (then `minutes` must be set)."""
    minutes: float | None = None
    """Training-time budget in minutes (rollouts and updates; checkpoints and evaluations not counted)."""
    seed: int = 0
    """Seed of the policy initialisation, the rollout days and the exploration noise."""
    # --- rollout ------------------------------------------------------------------------------------------
    batch_days: int = 8
    """B: training days per rollout (one environment gradient covers B x T x N actions)."""
    hard_day_share: float = 0.0
    """Share of each rollout's B days drawn in proportion to every training day's largest margin-tightened
    voltage violation (pu) when it was last rolled out, instead of uniformly: the days with the worst
    excursions come back more often (the rest are uniform, so every day keeps being seen; 0: uniform)."""
    hard_day_power: float = 1.0
    """Exponent p of the hard-day draws: in proportion to score ** p. With the training margin nearly every
    day has a small score, so p = 1 is close to uniform; a larger p concentrates the draws on the worst days."""
    hard_scenario_share: float = 0.0
    """Share of each rollout's B rows that re-run, with the current policy, scenarios from a pool of the
    hardest seen so far: a scenario is a training day together with its household load draws and initial
    device states (its reset seed), scored by its largest margin-tightened voltage violation when it was last
    rolled out (0: every row is a fresh scenario, as before the option)."""
    hard_scenario_pool: int = 32
    """Size of the hard-scenario pool: the scenarios with the highest scores among those rolled out so far
    (a replayed scenario's score is refreshed, so one the policy has learned to hold leaves the pool)."""
    # --- policy -------------------------------------------------------------------------------------------
    hidden: int = 16
    """Hidden width of every agent's MLP."""
    layers: int = 2
    """Hidden layers of every agent's MLP."""
    init_log_std: float = -2.0
    """Initial log standard deviation of the Gaussian (before tanh); -2 (std 0.14) explores less than -1 and,
    on IEEE-123 with 1,000 agents, left a third of the test-day violations after 25 iterations
    (docs/gradmap.md)."""
    policy_dtype: str = "float32"
    """dtype of the policy parameters and updates ("float32" or "float64"; the simulator keeps its own)."""
    # --- GradMAP: reuse and trust region -------------------------------------------------------------------
    reuse: int = 4
    """K: policy updates per environment gradient (1 with no trust region = GradMA)."""
    clip_radius: float | None = 0.1
    """Trust-region radius on each action's change |a_new - a_old| (None: no clipping)."""
    prox_eta: float | None = None
    """Proximal penalty |a_new - a_old|^2 / (2 eta) per action and day (None: no penalty)."""
    minibatches: int = 2
    """The K updates cycle through this many random minibatches of the rollout's (step, day) rows."""
    # --- optimiser ----------------------------------------------------------------------------------------
    lr: float = 3e-3
    """Adam learning rate at the start of the schedule."""
    lr_schedule: str = "cosine"
    """"constant", "linear" or "cosine" decay over the budget (iterations, or minutes if that ends first)."""
    lr_final_fraction: float = 0.1
    """Learning rate at the end of the schedule, as a fraction of `lr`."""
    adam_beta1: float = 0.9
    """Adam's first-moment decay."""
    adam_beta2: float = 0.999
    """Adam's second-moment decay."""
    max_grad_norm: float | None = 1.0
    """Per-agent gradient-norm clip (each agent's own parameter slice; None: off)."""
    policy_average: float = 0.0
    """Decay beta of an exponential moving average of every agent's policy parameters, updated after each
    iteration (``avg <- beta avg + (1 - beta) theta``, over about 1 / (1 - beta) iterations); the periodic
    evaluations, the exported policies and `train`'s returned params use the average (0: the last iterate)."""
    # --- Lagrangian and dual ascent ------------------------------------------------------------------------
    device_multiplier: str = "agent"
    """Granularity of the device multipliers: "agent" (one per agent) or "type" (one per device type)."""
    device_multiplier_init: float = 10.0
    """Initial device multiplier, $ per unit of device violation (kW or K) per step (the scale of ssl-penalty's
    fixed weight: dual ascent then starts where a penalty already works, instead of at 0)."""
    device_dual_lr: float = 0.1
    """Dual step of the device multipliers per unit of an agent's daily violation (unit-steps)."""
    voltage_multiplier_init: float = 1e4
    """Initial network multiplier, $ per pu of voltage violation per node and step (ssl-penalty's weight)."""
    voltage_dual_lr: float = 2e3
    """Dual step of the network multipliers per pu of violation (node, time of day; mean over days)."""
    device_violation_budget: float = 0.1
    """Allowed device violation per agent and day (unit-steps): device multipliers fall when below it."""
    voltage_violation_budget: float = 1e-5
    """Allowed (margin-tightened) voltage violation per node-step, pu: network multipliers fall below it."""
    voltage_margin_pu: float = 0.01
    """Training constraint uses [v_min + margin, v_max - margin] (metrics always use the true band); the margin
    absorbs the deterministic policy's and the test days' difference from the training rollouts."""
    voltage_quadratic: float = 1e9
    """rho of the augmented Lagrangian's (rho / 2) w^2 per node-step, $ per pu^2 of margin-tightened voltage
    violation w: a gradient that grows with the excursion, so the worst nodes weigh most (0: off)."""
    max_multiplier: float = 1e6
    """Upper bound of every multiplier."""
    # --- observation normalisation ------------------------------------------------------------------------
    normalize_obs: bool = True
    """Normalise observations per agent and feature with running statistics."""
    obs_std_min: float = 0.05
    """Lower bound of the normaliser's standard deviation."""
    obs_clip: float = 5.0
    """Normalised observations are clipped to [-obs_clip, obs_clip]."""
    # --- safety, checkpoints, monitoring ------------------------------------------------------------------
    max_pf_failure_share: float = 0.5
    """Stop (divergence) when more than this share of a rollout's power flows fail."""
    checkpoint_every: int = 25
    """Write a checkpoint every this many iterations (and at the end)."""
    eval_every: int = 0
    """Evaluate the deterministic policy on `eval_days` test days every this many iterations (0: off)."""
    eval_days: int = 8
    """Test days of the periodic evaluation (evenly spaced over the test split)."""

    def __post_init__(self) -> None:
        problems = []
        if self.iterations is None and self.minutes is None:
            problems.append("set iterations or minutes (the training budget)")
        if self.iterations is not None and self.iterations < 0:
            problems.append(f"iterations must be >= 0, got {self.iterations}")
        if self.minutes is not None and not (self.minutes >= 0):
            problems.append(f"minutes must be >= 0, got {self.minutes}")
        for name in ("batch_days", "hidden", "layers", "reuse", "minibatches", "checkpoint_every", "eval_days",
                     "hard_scenario_pool"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.hard_day_share <= 1:
            problems.append(f"hard_day_share must be in [0, 1], got {self.hard_day_share}")
        if not (math.isfinite(self.hard_day_power) and self.hard_day_power > 0):
            problems.append(f"hard_day_power must be finite and > 0, got {self.hard_day_power}")
        if not 0 <= self.hard_scenario_share <= 1:
            problems.append(f"hard_scenario_share must be in [0, 1], got {self.hard_scenario_share}")
        if self.eval_every < 0:
            problems.append(f"eval_every must be >= 0, got {self.eval_every}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.policy_dtype not in ("float32", "float64"):
            problems.append(f"policy_dtype must be 'float32' or 'float64', got {self.policy_dtype!r}")
        if self.device_multiplier not in ("agent", "type"):
            problems.append(f"device_multiplier must be 'agent' or 'type', got {self.device_multiplier!r}")
        for name in ("clip_radius", "prox_eta", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                problems.append(f"{name} must be > 0 or None, got {value}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.policy_average < 1:
            problems.append(f"policy_average must be in [0, 1), got {self.policy_average}")
        for name in ("device_multiplier_init", "voltage_multiplier_init", "device_dual_lr", "voltage_dual_lr",
                     "device_violation_budget", "voltage_violation_budget", "voltage_margin_pu", "voltage_quadratic"):
            if not 0 <= getattr(self, name) < float("inf"):
                problems.append(f"{name} must be finite and >= 0, got {getattr(self, name)}")
        for name in ("device_multiplier_init", "voltage_multiplier_init"):
            if getattr(self, name) > self.max_multiplier:
                problems.append(f"{name} ({getattr(self, name)}) must be at most max_multiplier "
                                f"({self.max_multiplier})")
        if self.minibatches > self.batch_days * 24:
            problems.append(f"minibatches must be at most the number of rollout rows, got {self.minibatches}")
        if problems:
            raise ValueError("invalid GradMAPConfig: " + "; ".join(problems))

    @property
    def is_gradma(self) -> bool:
        """True for the no-reuse variant (K = 1, no trust region)."""
        return self.reuse == 1 and self.minibatches == 1 and self.clip_radius is None and self.prox_eta is None

    @property
    def method(self) -> str:
        """The method's name in run directories: "gradma" for the no-reuse variant, else "gradmap"."""
        return "gradma" if self.is_gradma else "gradmap"


def check_fields(config_cls: type, fields: dict) -> dict:
    """``fields``, if every key names a field of the dataclass ``config_cls`` (``--set`` overrides); otherwise a
    ValueError that names the unknown keys and lists the known ones."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} field(s) {unknown}; known: {sorted(known)}")
    return fields


def gradmap_config(**fields) -> GradMAPConfig:
    """GradMAP's config from ``fields``; a ValueError names unknown or invalid fields."""
    return GradMAPConfig(**check_fields(GradMAPConfig, fields))


def gradma_config(**overrides) -> GradMAPConfig:
    """GradMA: GradMAP with one update per environment gradient and no trust region."""
    fields = {"reuse": 1, "minibatches": 1, "clip_radius": None, "prox_eta": None}
    fields.update(overrides)
    return gradmap_config(**fields)


class DivergenceError(RuntimeError):
    """Training produced NaN/inf or the power flow failed too often; the last good state was checkpointed."""


#: Columns of metrics.csv, in order (also the keys of each row of ``metrics["history"]``).
METRIC_FIELDS = (
    "iteration", "wall_s", "lr", "lagrangian", "cost", "violation_share", "violation_sum_pu", "worst_violation_pu",
    "device_violation", "pf_failures", "device_multiplier_mean", "device_multiplier_max", "voltage_multiplier_mean",
    "voltage_multiplier_max", "surrogate", "action_change", "clip_fraction", "grad_norm_mean", "grad_clipped_share",
    "policy_std", "rollout_s", "update_s", "eval_cost", "eval_violation_share", "eval_worst_violation_pu",
    "eval_device_violation",
)


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------


def _agent_type_index(sim) -> torch.Tensor:
    index = {name: k for k, name in enumerate(AGENT_TYPES)}
    return torch.tensor([index[t] for t in sim.agent_type], dtype=torch.int64)


# ----------------------------------------------------------------------------------------------------------
# The trainer state (everything a checkpoint holds)
# ----------------------------------------------------------------------------------------------------------


class GradMAPTrainer:
    """Everything one run holds (policies, optimiser, normaliser, multipliers, RNG, history) and one
    iteration of GradMAP; `train` drives it. Subclasses change how actions enter the rollout (`act`,
    `action_gradient`), the policy update (`update_policy`) or the dual step (`dual_step`)."""

    metric_fields: tuple[str, ...] = METRIC_FIELDS
    """Columns of metrics.csv (a trainer with other metrics names its own)."""

    def __init__(self, sim, config: GradMAPConfig):
        self.sim, self.config = sim, config
        self.pdtype = getattr(torch, config.policy_dtype)
        gen = torch.Generator().manual_seed(int(config.seed))
        self.policy = StackedMLPPolicy(sim.n_agents, OBS_DIM, hidden=config.hidden, layers=config.layers,
                                       init_log_std=config.init_log_std, generator=gen, dtype=self.pdtype,
                                       device=sim.device)
        self.normalizer = ObsNormalizer(sim.n_agents, OBS_DIM, std_min=config.obs_std_min, clip=config.obs_clip,
                                        enabled=config.normalize_obs, device=sim.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr,
                                          betas=(config.adam_beta1, config.adam_beta2))
        self.multipliers = Multipliers(sim.n_agents, sim.n_steps, sim.n_nodes, _agent_type_index(sim),
                                       granularity=config.device_multiplier,
                                       device_init=config.device_multiplier_init,
                                       voltage_init=config.voltage_multiplier_init, device=sim.device)
        self.gen = gen  # continues after the initialisation: rollout seeds and exploration noise
        self.policy_avg = self._policy_weights() if config.policy_average else None
        """Moving average of the policy parameters (`GradMAPConfig.policy_average`; None when off)."""
        self.train_days = torch.as_tensor(split_days("train"), dtype=torch.int64)
        self.day_score = torch.zeros(len(self.train_days), dtype=torch.float64)
        """Largest margin-tightened voltage violation (pu) of every training day when it was last rolled out
        (0 until then): `hard_day_share` draws days in proportion to it."""
        self.pool_day = torch.zeros(0, dtype=torch.int64)
        self.pool_seed = torch.zeros(0, dtype=torch.int64)
        self.pool_score = torch.zeros(0, dtype=torch.float64)
        """Hard-scenario pool (`hard_scenario_share`): day, reset seed and last score (pu) of each scenario,
        highest score first."""
        self.iteration = 0
        self.elapsed_s = 0.0
        self.history: list[dict] = []

    # --- checkpoints ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "iteration": self.iteration,
            "elapsed_s": self.elapsed_s,
            "config": dataclasses.asdict(self.config),
            "sim_config": sim_config_dict(self.sim),
            "policy": self._policy_weights(),
            "policy_average": clone_tree(self.policy_avg),
            "optimizer": clone_tree(self.optimizer.state_dict()),
            "normalizer": self.normalizer.state_dict(),
            "multipliers": self.multipliers.state_dict(),
            "rng": self.gen.get_state().clone(),
            "day_score": self.day_score.clone(),
            "hard_scenarios": {"day": self.pool_day.clone(), "seed": self.pool_seed.clone(),
                               "score": self.pool_score.clone()},
            "history": list(self.history),  # rows are never changed after they are appended
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a GradMAP checkpoint (format {state.get('format')!r})")
        self.iteration = int(state["iteration"])
        self.elapsed_s = float(state["elapsed_s"])
        self.policy.load_state_dict(state["policy"])
        if self.policy_avg is not None:
            self.policy_avg = clone_tree(state["policy_average"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.normalizer.load_state_dict(state["normalizer"])
        self.multipliers.load_state_dict(state["multipliers"])
        self.gen.set_state(state["rng"])
        # checkpoints from before hard-day sampling have no scores; they trained with uniform days
        self.day_score = state.get("day_score", torch.zeros_like(self.day_score)).clone()
        pool = state.get("hard_scenarios")  # absent before hard-scenario replay: an empty pool
        if pool is not None:
            self.pool_day, self.pool_seed, self.pool_score = (pool["day"].clone(), pool["seed"].clone(),
                                                              pool["score"].clone())
        self.history = [dict(row) for row in state["history"]]

    def params(self) -> dict:
        """The trained policies: stacked weights (their moving average when `policy_average` is set) and the
        normaliser (what `make_policy` takes)."""
        return {"policy": clone_tree(self.policy_avg) if self.policy_avg is not None else self._policy_weights(),
                "normalizer": self.normalizer.state_dict()}

    def _policy_weights(self) -> dict:
        return {k: v.detach().clone() for k, v in self.policy.state_dict().items()}

    def average_policy(self) -> None:
        """One step of the parameters' moving average (no-op when `policy_average` is 0)."""
        if self.policy_avg is None:
            return
        beta = self.config.policy_average
        with torch.no_grad():
            for name, value in self.policy.state_dict().items():
                self.policy_avg[name].mul_(beta).add_(value.detach(), alpha=1.0 - beta)

    # --- one iteration ---------------------------------------------------------------------------------------

    def rollout(self) -> dict:
        """Rollout of B training days with leaf actions, and the Lagrangian's gradient w.r.t. them."""
        sim, cfg = self.sim, self.config
        batch, n_steps = cfg.batch_days, sim.n_steps
        if cfg.hard_scenario_share > 0:
            scenarios = self.draw_scenarios(batch)
            noise = torch.randn((n_steps, batch, sim.n_agents), generator=self.gen, dtype=torch.float64)
            state = reset_scenarios(sim, "train", scenarios["day"].tolist(), scenarios["seed"].tolist())
        else:
            reset_seed = int(torch.randint(0, 2**62, (1,), generator=self.gen))
            noise = torch.randn((n_steps, batch, sim.n_agents), generator=self.gen, dtype=torch.float64)
            state = sim.reset(batch, seed=reset_seed, split="train", days=self.draw_days(batch))
        noise = noise.to(dtype=self.pdtype, device=sim.device)
        v_lo, v_hi = sim.config.v_min_pu, sim.config.v_max_pu
        xs, raw_obs, acts, leaves = [], [], [], []
        dev_viol, volt_viol, converged = [], [], []
        total = torch.zeros((), dtype=sim.dtype, device=sim.device)
        metrics = RolloutMetrics(sim)
        for t in range(n_steps):
            raw_obs.append(state.obs.detach())
            x, a, leaf = self.act(state.obs, noise[t], t)
            r = sim.step(state, leaf)
            term, dev, w = step_lagrangian(r, t, self.multipliers, v_lo, v_hi, cfg.voltage_margin_pu,
                                           cfg.voltage_quadratic)
            total = total + term
            state = r.state
            xs.append(x.detach())
            acts.append(a.detach())
            leaves.append(leaf)
            dev_viol.append(dev)
            volt_viol.append(w)
            converged.append(r.converged)
            metrics.add(r)
        voltage_violation = torch.stack(volt_viol)  # [T, B, n]
        row_worst = voltage_violation.detach().amax(dim=(0, 2)).to(torch.float64).cpu()  # [B] pu
        self.score_days(state.day_idx, row_worst)
        fresh = torch.ones(batch, dtype=torch.bool, device=sim.device)
        if cfg.hard_scenario_share > 0:
            self.update_pool(scenarios, row_worst)
            fresh = (scenarios["pooled"] < 0).to(sim.device)
        lagrangian = total / batch
        if not bool(torch.isfinite(lagrangian.detach())):
            raise DivergenceError(f"non-finite Lagrangian ({float(lagrangian.detach())}) at iteration {self.iteration}")
        lagrangian.backward()
        grad = self.action_gradient(leaves)
        if metrics.failures > cfg.max_pf_failure_share * batch * n_steps:
            raise DivergenceError(f"{metrics.failures} of {batch * n_steps} power flows failed at iteration "
                                  f"{self.iteration} (more than max_pf_failure_share={cfg.max_pf_failure_share})")
        return {
            "x": torch.stack(xs), "noise": noise, "a_old": torch.stack(acts), "grad": grad,
            "raw_obs": torch.stack(raw_obs), "device_violation": torch.stack(dev_viol),
            "voltage_violation": voltage_violation, "converged": torch.stack(converged), "fresh": fresh,
            "stats": {"lagrangian": float(lagrangian.detach()), **metrics.standard(batch)},
        }

    def draw_days(self, batch: int) -> torch.Tensor | None:
        """Training days of the next rollout: None (the simulator draws them uniformly) when
        `hard_day_share` is 0, else ``round(share * B)`` days drawn in proportion to ``day_score **
        hard_day_power`` (uniformly while no day has a violation) after ``B - round(share * B)`` uniform ones."""
        n_hard = round(self.config.hard_day_share * batch)
        if n_hard == 0:
            return None
        n_days = len(self.train_days)
        picks = [torch.randint(0, n_days, (batch - n_hard,), generator=self.gen)]
        if float(self.day_score.sum()) > 0:
            # Scaled by the largest score first, so that a large power cannot underflow every weight to 0.
            weights = (self.day_score / self.day_score.max()) ** self.config.hard_day_power
            picks.append(torch.multinomial(weights, n_hard, replacement=True, generator=self.gen))
        else:
            picks.append(torch.randint(0, n_days, (n_hard,), generator=self.gen))
        return self.train_days[torch.cat(picks)]

    def draw_scenarios(self, batch: int) -> dict[str, torch.Tensor]:
        """Day and reset seed of each of the next rollout's rows: ``round(hard_scenario_share * B)`` (at
        most the pool's size) drawn without replacement from the hard-scenario pool, the others fresh
        (days as `draw_days` gives them, or uniform; new random seeds), at least one. ``pooled`` [B] holds
        each row's pool index (-1 for a fresh row)."""
        # at least one fresh row, so that the dual step always has an unbiased sample (`dual_step`)
        n_hard = min(round(self.config.hard_scenario_share * batch), len(self.pool_day), batch - 1)
        n_fresh = batch - n_hard
        days = self.draw_days(n_fresh) if n_fresh else None
        if days is None:
            days = self.train_days[torch.randint(0, len(self.train_days), (n_fresh,), generator=self.gen)]
        seeds = torch.randint(0, 2**62, (n_fresh,), generator=self.gen)
        pooled = torch.randperm(len(self.pool_day), generator=self.gen)[:n_hard]
        return {"day": torch.cat([days, self.pool_day[pooled]]), "seed": torch.cat([seeds, self.pool_seed[pooled]]),
                "pooled": torch.cat([torch.full((n_fresh,), -1, dtype=torch.int64), pooled])}

    def update_pool(self, scenarios: dict[str, torch.Tensor], worst: torch.Tensor) -> None:
        """Refresh the scores of the replayed scenarios, add the fresh ones, and keep the
        `hard_scenario_pool` highest (``worst`` [B]: every row's largest margin-tightened voltage violation, pu,
        float64 on the CPU)."""
        pooled = scenarios["pooled"]
        replayed = pooled >= 0
        score = self.pool_score.clone()
        score[pooled[replayed]] = worst[replayed]
        fresh = ~replayed
        day = torch.cat([self.pool_day, scenarios["day"][fresh].cpu()])
        seed = torch.cat([self.pool_seed, scenarios["seed"][fresh].cpu()])
        score = torch.cat([score, worst[fresh]])
        keep = torch.sort(score, descending=True, stable=True).indices[: self.config.hard_scenario_pool]
        self.pool_day, self.pool_seed, self.pool_score = day[keep], seed[keep], score[keep]

    def score_days(self, day_idx: torch.Tensor, worst: torch.Tensor) -> None:
        """Record every rolled-out day's largest margin-tightened violation (``worst`` [B], pu, float64 on the
        CPU; 0 where the power flow failed) as its `day_score`."""
        position = torch.searchsorted(self.train_days, day_idx.cpu())
        self.day_score[position] = worst

    def act(self, obs: torch.Tensor, noise: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Actions of step ``t``: ``(x, a, sim_action)`` = normalised observations, policy actions [B, N] and
        what enters ``sim.step``. GradMAP: observations are inputs (detached) and the actions are leaves of
        the environment graph, so the backward stops at them (`action_gradient`)."""
        x = self.normalizer.normalize(obs.detach()).to(self.pdtype)
        with torch.no_grad():
            a = self.policy.act(x, noise)
        return x, a, a.to(self.sim.dtype).requires_grad_(True)

    def action_gradient(self, leaves: list[torch.Tensor]) -> torch.Tensor:
        """``dL/da`` [T, B, N] of the rollout's leaf actions after the backward."""
        grads = []
        for leaf in leaves:
            g = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
            grads.append(g.detach())
        grad = torch.stack(grads)  # [T, B, N]
        if not bool(torch.isfinite(grad).all()):
            raise DivergenceError(f"non-finite environment gradient dL/da at iteration {self.iteration}")
        return grad

    def update_policy(self, roll: dict, lr: float) -> dict:
        """K Adam steps on the proximal surrogate (K = 1, no trust region: GradMA's chain-rule step)."""
        cfg = self.config
        n_steps, batch, n = roll["a_old"].shape
        x = roll["x"].reshape(n_steps * batch, n, -1)
        noise = roll["noise"].reshape(n_steps * batch, n)
        a_old = roll["a_old"].reshape(n_steps * batch, n)
        grad = roll["grad"].to(self.pdtype).reshape(n_steps * batch, n)
        self.set_lr(lr)
        n_rows = n_steps * batch
        stats = {}
        norms = None
        order = None
        for k in range(cfg.reuse):
            if cfg.minibatches == 1:
                rows = slice(None)
            else:
                part = k % cfg.minibatches
                if part == 0:
                    order = torch.randperm(n_rows, generator=self.gen).to(x.device)
                rows = order[part * n_rows // cfg.minibatches:(part + 1) * n_rows // cfg.minibatches]
            scale = 1.0 if cfg.minibatches == 1 else n_rows / float(len(rows))
            self.optimizer.zero_grad(set_to_none=True)
            a_new = self.policy.act(x[rows], noise[rows])
            surrogate, s = proximal_surrogate(a_new, a_old[rows], grad[rows], cfg.clip_radius, cfg.prox_eta,
                                              prox_weight=1.0 / batch)
            (surrogate * scale).backward()
            norms = self.clipped_step()
            stats = {"surrogate": float(surrogate.detach()) * scale, **s}
        return {**stats, **self.update_stats(norms, x[: batch])}

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def clipped_step(self) -> torch.Tensor:
        """Per-agent clipping of the policy gradient in ``.grad``, then one Adam step; [N] norms before clipping."""
        norms = clip_grad_norm_per_agent_(list(self.policy.parameters()), self.config.max_grad_norm)
        if not bool(torch.isfinite(norms).all()):
            raise DivergenceError(f"non-finite policy gradient at iteration {self.iteration}")
        self.optimizer.step()
        return norms

    def update_stats(self, norms: torch.Tensor, x: torch.Tensor) -> dict:
        """Checks the parameters after an update; metrics of the last step's ``norms`` and the policy's
        spread on normalised observations ``x`` [B, N, d]."""
        cfg = self.config
        for p in self.policy.parameters():
            if not bool(torch.isfinite(p.detach()).all()):
                raise DivergenceError(f"non-finite policy parameters after the update of iteration {self.iteration}")
        stats = {"grad_norm_mean": float(norms.mean()),
                 "grad_clipped_share": (float((norms > cfg.max_grad_norm).to(torch.float64).mean())
                                        if cfg.max_grad_norm is not None else 0.0)}
        with torch.no_grad():
            _, log_std = self.policy(x)
            stats["policy_std"] = float(log_std.exp().mean())
        return stats

    def dual_step(self, roll: dict) -> None:
        """Projected dual ascent on the multipliers with the rollout's violations."""
        cfg = self.config
        # The multipliers price expectation constraints: their step uses the fresh rows only, because
        # replayed hard scenarios are a sample chosen for its violations (an upward-biased estimate).
        fresh = roll["fresh"]
        dual_update(self.multipliers, roll["device_violation"][:, fresh], roll["voltage_violation"][:, fresh],
                    roll["converged"][:, fresh].sum(dim=1),
                    cfg.device_dual_lr, cfg.voltage_dual_lr, cfg.max_multiplier,
                    device_budget=cfg.device_violation_budget, voltage_budget=cfg.voltage_violation_budget)

    def iterate(self) -> dict:
        """One full iteration; returns its metrics row (without wall_s and eval columns)."""
        cfg = self.config
        lr = lr_at(cfg, budget_progress(cfg, self.iteration, self.elapsed_s))
        t0 = time.perf_counter()
        roll = self.rollout()
        t1 = time.perf_counter()
        upd = self.update_policy(roll, lr)
        self.dual_step(roll)
        self.normalizer.update(roll["raw_obs"])
        self.average_policy()
        t2 = time.perf_counter()
        row = {"iteration": self.iteration + 1, "lr": lr, **roll["stats"], **self.multipliers.summary(), **upd,
               "rollout_s": t1 - t0, "update_s": t2 - t1}
        return row
