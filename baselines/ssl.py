"""Self-supervised learning through the simulator (``ssl``, ``ssl-penalty``): backpropagation through time
of the rollout objective, through the per-agent policies and the differentiable core.

The per-agent policies, the observation normaliser, the Lagrangian and its multipliers are the public pieces
GradMAP composes too (`gradmap_agent.networks`, `gradmap_agent.losses`, `gradmap_agent.config`); this file
holds SSL's own loop body, and `gridedge_run.loop.train` drives `SSLTrainer` as it drives every trainer.
What differs from GradMAP:

1. **The graph runs through the policies.** At every step the policy's action (reparameterised, with
   the stored noise) enters ``sim.step`` with its graph, and the observation the policy reads comes from the
   simulator with its graph (GradMAP's environment gradient keeps the same graph, without the parameters).
   One ``backward()`` of the rollout's Lagrangian therefore gives ``dL/dtheta`` including how each action
   changes later observations and through them later actions: BPTT over T steps through devices, power flow
   and policies.
2. **One policy update per rollout**: per-agent gradient clipping and one Adam step on that gradient; no
   stored-rollout reuse, no trust region. Hard-scenario replay and parameter averaging are GradMAP's
   (`gradmap_agent.replay`, the same ``replay`` settings, off by default).
3. **Constraint weights.** ``ssl``: GradMAP's primal-dual ascent on the same multipliers
   (`gradmap_agent.losses.dual_update`). ``ssl-penalty``: fixed penalty weights (`SSLConfig.device_penalty`,
   `SSLConfig.voltage_penalty`), no dual ascent.

``docs/baselines.md`` has the equations and results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from gradmap_agent.checkpoint import common_state, restore_common
from gradmap_agent.config import (
    LagrangianConfig,
    NormalizerConfig,
    OptimConfig,
    PolicyConfig,
    ReplayConfig,
    RunConfig,
    build_config,
    section,
)
from gradmap_agent.distributed import (
    all_sum,
    all_sum_grads,
    fold_observations,
    rank_rows,
    sum_dual_statistics,
    sum_metrics,
)
from gradmap_agent.losses import (
    MULTIPLIER_FIELDS,
    Multipliers,
    clip_grad_norm_per_agent_,
    dual_update,
    step_lagrangian,
)
from gradmap_agent.networks import ObsNormalizer, StackedMLPPolicy, clone_tree, policy_input, rule_and_bounds
from gradmap_agent.replay import HardScenarioPool, PolicyAverage, current_weights, start_rollout
from gradmap_agent.train import DivergenceError, update_stats
from gridedge_env.core import OBS_DIM
from gridedge_env.metrics import EVAL_METRICS, METRIC_NAMES, RolloutMetrics

__all__ = ["METRIC_FIELDS", "SSLConfig", "SSLTrainer", "ssl_config", "ssl_penalty_config"]

CHECKPOINT_FORMAT = "gridedge-ssl-checkpoint/2"

#: Columns of an SSL run's metrics.csv, in order.
METRIC_FIELDS = (
    "iteration",
    "wall_s",
    "lr",
    "lagrangian",
    *METRIC_NAMES,
    *MULTIPLIER_FIELDS,
    "grad_norm_mean",
    "grad_clipped_share",
    "policy_std",
    "rollout_s",
    "update_s",
    *(f"eval_{name}" for name in EVAL_METRICS),
)


@dataclass(frozen=True)
class SSLConfig:
    """Self-supervised learning's settings; the sections mean what they mean for GradMAP (`gradmap_agent.config`).
    Defaults: GradMAP's rollout, network, optimiser and multiplier settings."""

    run: RunConfig = section(RunConfig)
    """Budget, seed, checkpoints, periodic evaluation, failure limit."""
    optim: OptimConfig = section(OptimConfig)
    """Adam, learning-rate schedule, per-agent gradient clipping."""
    normalizer: NormalizerConfig = section(NormalizerConfig)
    """Running observation statistics."""
    policy: PolicyConfig = section(PolicyConfig)
    """Every agent's network."""
    lagrangian: LagrangianConfig = section(LagrangianConfig)
    """Multipliers and dual ascent (``ssl``; ``ssl-penalty`` keeps the multipliers at its two penalties)."""
    replay: ReplayConfig = section(ReplayConfig)
    """Hard-scenario replay and parameter averaging (GradMAP's; off by default)."""
    batch_days: int = 8
    """B: training days per rollout."""
    bptt_window: int | None = 4
    """Truncated BPTT: the observations' graph is cut every this many steps (4: two hours), so a gradient
    passes through at most this many policies in a row (the devices' and network's own dynamics stay
    differentiated over the whole day). None: full BPTT over the day, whose gradient explodes on IEEE-123 with
    1,000 agents (per-agent norms from 1e2 to 1e10 within 150 iterations; docs/baselines.md)."""
    fixed_penalties: bool = False
    """True: ``ssl-penalty`` (the multipliers stay at the two penalties below; no dual ascent)."""
    # GradMAP's dual ascent starts from these weights (its initial multipliers), so they are defined once.
    device_penalty: float = LagrangianConfig.device_multiplier_init
    """(ssl-penalty) $ per unit of device violation (kW or K) per agent-step (100)."""
    voltage_penalty: float = LagrangianConfig.voltage_multiplier_init
    """(ssl-penalty) $ per pu of voltage violation per node-step (outside the margin-tightened band; 1e4)."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("batch_days",):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.bptt_window is not None and not (isinstance(self.bptt_window, int) and self.bptt_window >= 1):
            problems.append(f"bptt_window must be a positive integer or None, got {self.bptt_window!r}")
        for name in ("device_penalty", "voltage_penalty"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if problems:
            raise ValueError("invalid SSLConfig: " + "; ".join(problems))

    @property
    def method(self) -> str:
        """The method's name in run directories: "ssl-penalty" with fixed penalties, else "ssl"."""
        return "ssl-penalty" if self.fixed_penalties else "ssl"


def ssl_config(**fields) -> SSLConfig:
    """``ssl``: primal-dual self-supervised learning. Raises ValueError naming unknown or invalid fields."""
    return build_config(SSLConfig, fields)


def ssl_penalty_config(**fields) -> SSLConfig:
    """``ssl-penalty``: self-supervised learning with fixed penalty weights."""
    return ssl_config(**{"fixed_penalties": True, **fields})


class SSLTrainer:
    """Everything one SSL run holds (policies, optimiser, normaliser, multipliers, RNG, history) and one
    iteration (`iterate`): a rollout with the graph through the policies, one backward, one clipped Adam step,
    the dual step."""

    metric_fields: tuple[str, ...] = METRIC_FIELDS
    """Columns of metrics.csv."""
    data_parallel = True
    """Trains data-parallel over ``torch.distributed`` ranks (`gradmap_agent.distributed`)."""

    def __init__(self, sim, config: SSLConfig):
        if not isinstance(config, SSLConfig):
            raise ValueError(f"SSLTrainer needs an SSLConfig, got {type(config).__name__}")
        self.sim, self.config = sim, config
        self.pdtype = config.policy.dtype
        self.gen = torch.Generator().manual_seed(int(config.run.seed))  # initialisation, then rollouts and noise
        self.policy = StackedMLPPolicy.from_config(
            sim.n_agents, OBS_DIM, config.policy, generator=self.gen, device=sim.device
        )
        self.normalizer = ObsNormalizer.from_config(sim.n_agents, OBS_DIM, config.normalizer, device=sim.device)
        self.optimizer = config.optim.adam(self.policy.parameters())
        fixed = config.fixed_penalties
        self.multipliers = Multipliers.for_sim(
            sim,
            device_init=config.device_penalty if fixed else config.lagrangian.device_multiplier_init,
            voltage_init=config.voltage_penalty if fixed else config.lagrangian.voltage_multiplier_init,
        )
        self.average = PolicyAverage(self.policy, config.replay.policy_average)
        self.pool = HardScenarioPool(config.replay)
        self.iteration = 0
        self.elapsed_s = 0.0
        self.history: list[dict] = []

    def iterate(self) -> dict:
        """One full iteration; returns its metrics row (without wall_s and eval columns)."""
        cfg = self.config
        lr = cfg.optim.lr_at(self.iteration)
        t0 = time.perf_counter()
        roll = self.rollout()  # its backward leaves dL/dtheta in the policy's .grad
        t1 = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        all_sum_grads(self.policy.parameters())  # data parallelism: the whole batch's gradient on every rank
        norms = clip_grad_norm_per_agent_(list(self.policy.parameters()), cfg.optim.max_grad_norm)
        if not bool(torch.isfinite(norms).all()):
            raise DivergenceError(f"non-finite policy gradient at iteration {self.iteration}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # the next rollout's backward accumulates from zero
        upd = update_stats(self, norms, roll["x0"])
        if not cfg.fixed_penalties:
            # fresh rows only: replayed hard scenarios would bias the expectation upwards (`gradmap_agent.replay`)
            fresh = roll["fresh"]
            dual_update(
                self.multipliers,
                *sum_dual_statistics(roll["device_violation"][:, fresh], roll["voltage_violation"][:, fresh]),
                cfg.lagrangian,
            )
        fold_observations(self.normalizer, roll["raw_obs"])
        self.average.step(self.policy)
        t2 = time.perf_counter()
        return {
            "iteration": self.iteration + 1,
            "lr": lr,
            **roll["stats"],
            **self.multipliers.summary(),
            **upd,
            "rollout_s": t1 - t0,
            "update_s": t2 - t1,
        }

    def rollout(self) -> dict:
        """B training days with the actions' graph through the policies and the observations (cut every
        `bptt_window` steps), then one backward of the rollout's Lagrangian. The scenarios and the noise are
        drawn for all B rows; under data parallelism this rank rolls out its rows (as GradMAP's rollout)."""
        sim, cfg, lag = self.sim, self.config, self.config.lagrangian
        batch, n_steps = cfg.batch_days, sim.n_steps
        rows = rank_rows(batch)
        state, noise, scenarios = start_rollout(sim, self.pool, batch, rows, self.gen)
        noise = noise[:, rows].to(dtype=self.pdtype, device=sim.device)
        v_lo, v_hi = sim.config.v_min_pu, sim.config.v_max_pu
        raw_obs, dev_viol, volt_viol = [], [], []
        x0 = None
        total = torch.zeros((), dtype=sim.dtype, device=sim.device)
        metrics = RolloutMetrics(sim)
        for t in range(n_steps):
            raw_obs.append(state.obs.detach())
            obs = policy_input(state.obs, t, cfg.bptt_window)  # truncated BPTT
            x = self.normalizer.normalize(obs).to(self.pdtype)
            x0 = x.detach() if x0 is None else x0
            a = self.policy.act(x, rule_and_bounds(obs).to(self.pdtype), noise[t])
            r = sim.step(state, a.to(sim.dtype))
            term, dev, w = step_lagrangian(
                r, t, self.multipliers, v_lo, v_hi, lag.voltage_margin_pu, lag.voltage_quadratic
            )
            total = total + term
            state = r.state
            dev_viol.append(dev)
            volt_viol.append(w)
            metrics.add(r)
        voltage_violation = torch.stack(volt_viol)  # [T, b, n] (b: this rank's rows)
        fresh = self.pool.record(scenarios, voltage_violation, rows)
        (total / batch).backward()  # this rank's rows' share of the batch's Lagrangian
        total = all_sum(total.detach().to(torch.float64))  # every rank checks the same sum
        sum_metrics(metrics)
        lagrangian = float(total) / batch
        if not bool(torch.isfinite(total)):
            raise DivergenceError(f"non-finite Lagrangian ({lagrangian}) at iteration {self.iteration}")
        if metrics.failures > cfg.run.max_pf_failure_share * batch * n_steps:
            raise DivergenceError(
                f"{metrics.failures} of {batch * n_steps} power flows failed at iteration "
                f"{self.iteration} (more than max_pf_failure_share={cfg.run.max_pf_failure_share})"
            )
        return {
            "x0": x0,
            "raw_obs": torch.stack(raw_obs),
            "device_violation": torch.stack(dev_viol),
            "voltage_violation": voltage_violation,
            "fresh": fresh,
            "stats": {"lagrangian": lagrangian, **metrics.standard(batch)},
        }

    # --- checkpoints -------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            **common_state(self, CHECKPOINT_FORMAT),
            "policy": current_weights(self.policy),
            "policy_average": self.average.state_dict(),
            "optimizer": clone_tree(self.optimizer.state_dict()),
            "normalizer": self.normalizer.state_dict(),
            "multipliers": self.multipliers.state_dict(),
            "hard_scenarios": self.pool.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        restore_common(self, state, CHECKPOINT_FORMAT)
        self.policy.load_state_dict(state["policy"])
        self.average.load_state_dict(state["policy_average"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.normalizer.load_state_dict(state["normalizer"])
        self.multipliers.load_state_dict(state["multipliers"])
        self.pool.load_state_dict(state["hard_scenarios"])

    def params(self) -> dict:
        """The trained policies: stacked weights (their moving average when `policy_average` is set) and the
        normaliser (what `make_policy` takes)."""
        return {
            "policy": self.average.exported(self.policy),
            "normalizer": self.normalizer.state_dict(),
        }
