"""GradMAP (and GradMA, its K = 1 special case on the same code path): one iteration, top to bottom.

1. **Rollout** (`GradMAPTrainer.rollout`). Reset B training days. At every step each agent's policy maps
   its own (normalised) observation and a stored standard-normal noise to ``a = tanh(mean + std * noise)``;
   the actions enter the differentiable core as leaf tensors (``requires_grad``) plus, within a
   ``bptt_window``, the policy's reaction to its observation (value zero, parameters out of the graph), and
   the Lagrangian (`losses.step_lagrangian`) is summed.
2. **Exact environment gradient.** One ``backward()`` with respect to the leaves gives ``g = dL/da`` for every
   step and agent: the total derivative through costs, device dynamics, the implicit power-flow gradient, all
   later states, and the later policies' reactions to the observations the action changes (truncated every
   ``bptt_window`` steps, as ssl truncates its BPTT).
3. **Policy updates** (`GradMAPTrainer.update_policy`). K Adam steps on the proximal surrogate
   `losses.proximal_surrogate` over the stored observations, noise, old actions and ``g``, with per-agent
   gradient clipping. K = 1 without trust region is GradMA (one update on the chain rule
   ``sum g * da/dtheta``).
4. **Dual ascent** (`losses.dual_update`) on the multipliers with the rollout's violations; then the
   observation normaliser folds in the rollout's observations (it is frozen during the rollout and the K
   updates), and, with ``policy_average``, the moving average of the parameters takes a step.

With ``hard_scenario_share``, part of every rollout re-runs the hardest scenarios seen so far (a training
day with its household draws: its reset seed) with the current policy (`gradmap_agent.replay`, which SSL
uses too).

Under data parallelism (`gradmap_agent.distributed`: ``torchrun`` or ``gridedge train --nproc``) every rank
draws the whole batch's scenarios and noise, rolls out its share of the rows, and the ranks sum the policy
gradients, the dual statistics and the observation moments: every rank holds the same policies and
multipliers as one process with the same batch.

The run layer (`gridedge_run.loop.train`) drives `GradMAPTrainer.iterate` with a budget, checkpoints and
periodic evaluation. ``docs/gradmap.md`` has the equations and the configuration.
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
    sum_floats,
    sum_metrics,
    world,
)
from gradmap_agent.losses import (
    MULTIPLIER_FIELDS,
    Multipliers,
    clip_grad_norm_per_agent_,
    dual_update,
    proximal_surrogate,
    step_lagrangian,
)
from gradmap_agent.networks import ObsNormalizer, StackedMLPPolicy, clone_tree, policy_input, rule_and_bounds
from gradmap_agent.replay import HardScenarioPool, PolicyAverage, current_weights, start_rollout
from gridedge_env.core import OBS_DIM
from gridedge_env.metrics import EVAL_METRICS, METRIC_NAMES, RolloutMetrics

__all__ = [
    "CHECKPOINT_FORMAT",
    "METRIC_FIELDS",
    "DivergenceError",
    "GradMAPConfig",
    "GradMAPTrainer",
    "gradma_config",
    "gradmap_config",
]

CHECKPOINT_FORMAT = "gridedge-gradmap-checkpoint/2"

#: Columns of metrics.csv, in order (also the keys of each row of ``metrics["history"]``).
METRIC_FIELDS = (
    "iteration",
    "wall_s",
    "lr",
    "lagrangian",
    *METRIC_NAMES,
    *MULTIPLIER_FIELDS,
    "surrogate",
    "action_change",
    "clip_fraction",
    "grad_norm_mean",
    "grad_clipped_share",
    "policy_std",
    "rollout_s",
    "update_s",
    *(f"eval_{name}" for name in EVAL_METRICS),
)


class DivergenceError(RuntimeError):
    """Training produced NaN/inf or the power flow failed too often; the last good state was checkpointed."""


@dataclass(frozen=True)
class GradMAPConfig:
    """GradMAP / GradMA hyperparameters. Defaults suit IEEE-123 with 1,000 agents on a 2-core CPU.

    Build it from flat names with `gradmap_config` (``gradmap_config(lr=1e-3, eval_days=4)``): every name
    belongs to this class or to exactly one of its sections."""

    run: RunConfig = section(RunConfig)
    """Budget, seed, checkpoints, periodic evaluation, failure limit."""
    optim: OptimConfig = section(OptimConfig)
    """Adam, learning-rate schedule, per-agent gradient clipping."""
    normalizer: NormalizerConfig = section(NormalizerConfig)
    """Running observation statistics."""
    policy: PolicyConfig = section(PolicyConfig)
    """Every agent's network."""
    lagrangian: LagrangianConfig = section(LagrangianConfig)
    """Multipliers and dual ascent."""
    replay: ReplayConfig = section(ReplayConfig)
    """Hard-scenario replay and parameter averaging (off by default)."""
    # --- rollout ------------------------------------------------------------------------------------------
    batch_days: int = 8
    """B: training days per rollout (one environment gradient covers B x T x N actions)."""
    # --- GradMAP: reuse and trust region -------------------------------------------------------------------
    reuse: int = 2
    """K: policy updates per environment gradient (1 with no trust region = GradMA)."""
    clip_radius: float | None = 0.1
    """Trust-region radius on each action's change |a_new - a_old| (None: no clipping)."""
    minibatches: int = 2
    """The K updates cycle through this many random minibatches of the rollout's (step, day) rows."""
    bptt_window: int | None = 4
    """The environment gradient ``dL/da`` includes the later policies' reactions to the observations an action
    changes (its own device state, its node's voltage), through at most this many policies in a row: the
    observations' graph is cut at the start of every this many steps (`gradmap_agent.networks.policy_input`;
    the same truncation as ssl's). 1: every observation is cut, later actions are held fixed (the paper's
    environment gradient); None: the whole day. Without it a policy cannot see that reacting strongly to its
    own state makes it oscillate (docs/gradmap.md, The policies' reactions)."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("batch_days", "reuse", "minibatches"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.clip_radius is not None and not self.clip_radius > 0:
            problems.append(f"clip_radius must be > 0 or None, got {self.clip_radius}")
        if self.bptt_window is not None and self.bptt_window < 1:
            problems.append(f"bptt_window must be >= 1 or None, got {self.bptt_window}")
        if self.minibatches > self.batch_days * 24:
            problems.append(f"minibatches must be at most the number of rollout rows, got {self.minibatches}")
        if problems:
            raise ValueError("invalid GradMAPConfig: " + "; ".join(problems))

    @property
    def is_gradma(self) -> bool:
        """True for the no-reuse variant (K = 1, no trust region)."""
        return self.reuse == 1 and self.minibatches == 1 and self.clip_radius is None

    @property
    def method(self) -> str:
        """The method's name in run directories: "gradma" for the no-reuse variant, else "gradmap"."""
        return "gradma" if self.is_gradma else "gradmap"


def gradmap_config(**fields) -> GradMAPConfig:
    """GradMAP's config from flat (``lr=...``), dotted (``optim.lr=...``) or sectioned fields; a ValueError
    names unknown or invalid fields."""
    return build_config(GradMAPConfig, fields)


def gradma_config(**fields) -> GradMAPConfig:
    """GradMA: GradMAP with one update per environment gradient and no trust region."""
    return gradmap_config(**{"reuse": 1, "minibatches": 1, "clip_radius": None, **fields})


class GradMAPTrainer:
    """Everything one run holds (policies, optimiser, normaliser, multipliers, RNG, hard-scenario pool,
    history) and one iteration of GradMAP (`iterate`)."""

    metric_fields: tuple[str, ...] = METRIC_FIELDS
    """Columns of metrics.csv."""
    data_parallel = True
    """Trains data-parallel over ``torch.distributed`` ranks (`gradmap_agent.distributed`)."""

    def __init__(self, sim, config: GradMAPConfig):
        self.sim, self.config = sim, config
        self.pdtype = config.policy.dtype
        gen = torch.Generator().manual_seed(int(config.run.seed))
        self.policy = StackedMLPPolicy.from_config(
            sim.n_agents, OBS_DIM, config.policy, generator=gen, device=sim.device
        )
        self.normalizer = ObsNormalizer.from_config(sim.n_agents, OBS_DIM, config.normalizer, device=sim.device)
        self.optimizer = config.optim.adam(self.policy.parameters())
        lag = config.lagrangian
        self.multipliers = Multipliers.for_sim(
            sim, device_init=lag.device_multiplier_init, voltage_init=lag.voltage_multiplier_init
        )
        self.gen = gen  # continues after the initialisation: rollout seeds and exploration noise
        self.average = PolicyAverage(self.policy, config.replay.policy_average)
        self.pool = HardScenarioPool(config.replay)
        self.iteration = 0
        self.elapsed_s = 0.0
        self.history: list[dict] = []

    # --- one iteration ---------------------------------------------------------------------------------------

    def iterate(self) -> dict:
        """One full iteration; returns its metrics row (without wall_s and eval columns)."""
        cfg = self.config
        lr = cfg.optim.lr_at(self.iteration)
        t0 = time.perf_counter()
        roll = self.rollout()
        t1 = time.perf_counter()
        upd = self.update_policy(roll, lr)
        self.dual_step(roll)
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
        """Rollout of B training days with leaf actions, and the Lagrangian's gradient w.r.t. them.

        The scenarios and the noise are drawn for all B rows; under data parallelism this rank rolls out its
        rows (`gradmap_agent.distributed.rank_rows`): the returned tensors hold those rows, ``stats`` the
        whole batch."""
        sim, cfg, lag = self.sim, self.config, self.config.lagrangian
        batch, n_steps = cfg.batch_days, sim.n_steps
        rows = rank_rows(batch)
        state, noise, scenarios = start_rollout(sim, self.pool, batch, rows, self.gen)
        noise = noise[:, rows].to(dtype=self.pdtype, device=sim.device)
        v_lo, v_hi = sim.config.v_min_pu, sim.config.v_max_pu
        xs, raw_obs, acts, leaves, dev_viol, volt_viol = [], [], [], [], [], []
        total = torch.zeros((), dtype=sim.dtype, device=sim.device)
        metrics = RolloutMetrics(sim)
        for t in range(n_steps):
            raw_obs.append(state.obs.detach())
            # the actions are leaves of the environment graph; the observations keep their graph within a window
            obs = policy_input(state.obs, t, cfg.bptt_window)
            x = self.normalizer.normalize(obs).to(self.pdtype)
            rule = rule_and_bounds(obs).to(self.pdtype)
            if x.requires_grad:
                reaction = self.policy.act(x, rule, noise[t])
                a = reaction.detach()
            else:
                with torch.no_grad():
                    a = self.policy.act(x, rule, noise[t])
            leaf = a.to(sim.dtype).requires_grad_(True)
            action = leaf
            if x.requires_grad:
                # the same value as the leaf, plus the policy's reaction to its observation: dL/dleaf of an
                # earlier step then runs through this step's policy (parameters held fixed: only the leaves
                # are differentiated)
                reaction = reaction.to(sim.dtype)
                action = leaf + (reaction - reaction.detach())
            r = sim.step(state, action)
            term, dev, w = step_lagrangian(
                r, t, self.multipliers, v_lo, v_hi, lag.voltage_margin_pu, lag.voltage_quadratic
            )
            total = total + term
            state = r.state
            xs.append(x.detach())
            acts.append(a.detach())
            leaves.append(leaf)
            dev_viol.append(dev)
            volt_viol.append(w)
            metrics.add(r)
        voltage_violation = torch.stack(volt_viol)  # [T, b, n] (b: this rank's rows)
        fresh = self.pool.record(scenarios, voltage_violation, rows)
        # this rank's rows' share of the batch's Lagrangian: dL/da of those rows (the leaves only, never the policy)
        (total / batch).backward(inputs=leaves)
        grad = torch.stack(
            [(leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)).detach() for leaf in leaves]
        )  # [T, b, N]
        # summed over the ranks, so that every rank raises together
        checks = all_sum(
            torch.stack([total.detach().to(torch.float64), (~torch.isfinite(grad)).sum().to(torch.float64)])
        )
        sum_metrics(metrics)
        lagrangian = float(checks[0]) / batch
        if not torch.isfinite(checks[0]):
            raise DivergenceError(f"non-finite Lagrangian ({lagrangian}) at iteration {self.iteration}")
        if float(checks[1]) > 0:
            raise DivergenceError(f"non-finite environment gradient dL/da at iteration {self.iteration}")
        if metrics.failures > cfg.run.max_pf_failure_share * batch * n_steps:
            raise DivergenceError(
                f"{metrics.failures} of {batch * n_steps} power flows failed at iteration "
                f"{self.iteration} (more than max_pf_failure_share={cfg.run.max_pf_failure_share})"
            )
        return {
            "x": torch.stack(xs),
            "noise": noise,
            "a_old": torch.stack(acts),
            "grad": grad,
            "raw_obs": torch.stack(raw_obs),
            "device_violation": torch.stack(dev_viol),
            "voltage_violation": voltage_violation,
            "fresh": fresh,
            "rows": rows,
            "stats": {"lagrangian": lagrangian, **metrics.standard(batch)},
        }

    def update_policy(self, roll: dict, lr: float) -> dict:
        """K Adam steps on the proximal surrogate (K = 1, no trust region: GradMA's chain-rule step).

        A minibatch is a random share of the batch's T x B (step, day) rows, drawn for the whole batch;
        under data parallelism each rank differentiates the surrogate over the rows it holds and the ranks
        sum the gradients before the per-agent clipping."""
        cfg = self.config
        n_steps, local, n = roll["a_old"].shape
        batch, first = cfg.batch_days, roll["rows"].start
        x = roll["x"].reshape(n_steps * local, n, -1)
        rule = rule_and_bounds(roll["raw_obs"]).to(self.pdtype).reshape(n_steps * local, n, 3)
        noise = roll["noise"].reshape(n_steps * local, n)
        a_old = roll["a_old"].reshape(n_steps * local, n)
        grad = roll["grad"].to(self.pdtype).reshape(n_steps * local, n)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n_rows = n_steps * batch  # of the whole batch; row t * B + b is day b at step t
        params = list(self.policy.parameters())
        stats, norms, order = {}, None, None
        for k in range(cfg.reuse):
            if cfg.minibatches == 1:
                rows, scale = slice(None), 1.0
            else:
                part = k % cfg.minibatches
                if part == 0:
                    order = torch.randperm(n_rows, generator=self.gen)
                chosen = order[part * n_rows // cfg.minibatches : (part + 1) * n_rows // cfg.minibatches]
                day = chosen % batch
                mine = (day >= first) & (day < first + local)  # this rank's days, as rows of its tensors
                rows = ((chosen[mine] // batch) * local + day[mine] - first).to(x.device)
                scale = n_rows / float(len(chosen))
            self.optimizer.zero_grad(set_to_none=True)
            a_new = self.policy.act(x[rows], rule[rows], noise[rows])
            surrogate, s = proximal_surrogate(a_new, a_old[rows], grad[rows], cfg.clip_radius)
            (surrogate * scale).backward()
            all_sum_grads(params)
            norms = clip_grad_norm_per_agent_(params, cfg.optim.max_grad_norm)
            if not bool(torch.isfinite(norms).all()):
                raise DivergenceError(f"non-finite policy gradient at iteration {self.iteration}")
            self.optimizer.step()
        # the last update's metrics over the whole batch (action statistics weighted by this rank's actions)
        count = a_new.numel()
        sums = sum_floats(
            {
                "surrogate": float(surrogate.detach()) * scale,
                "action_change": s["action_change"] * count if count else 0.0,
                "clip_fraction": s["clip_fraction"] * count if count else 0.0,
                "count": float(count),
            }
        )
        stats = {
            "surrogate": sums["surrogate"],
            "action_change": sums["action_change"] / max(sums["count"], 1.0),
            "clip_fraction": sums["clip_fraction"] / max(sums["count"], 1.0),
        }
        return {**stats, **update_stats(self, norms, x[:local])}

    def dual_step(self, roll: dict) -> None:
        """Projected dual ascent on the multipliers with the rollout's violations."""
        # The multipliers price expectation constraints: their step uses the fresh rows only, because
        # replayed hard scenarios are a sample chosen for its violations (an upward-biased estimate).
        fresh = roll["fresh"]
        dual_update(
            self.multipliers,
            *sum_dual_statistics(roll["device_violation"][:, fresh], roll["voltage_violation"][:, fresh]),
            self.config.lagrangian,
        )

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


def update_stats(trainer, norms: torch.Tensor, x: torch.Tensor) -> dict:
    """Checks ``trainer.policy``'s parameters after an update (DivergenceError on NaN/inf); metrics of the last
    step's per-agent gradient ``norms`` and the policy's spread on normalised observations ``x`` [B, N, d]."""
    for p in trainer.policy.parameters():
        if not bool(torch.isfinite(p.detach()).all()):
            raise DivergenceError(f"non-finite policy parameters after the update of iteration {trainer.iteration}")
    max_norm = trainer.config.optim.max_grad_norm
    stats = {
        "grad_norm_mean": float(norms.mean()),
        "grad_clipped_share": float((norms > max_norm).to(torch.float64).mean()) if max_norm is not None else 0.0,
    }
    with torch.no_grad():
        _, log_std = trainer.policy(x)
        # this rank's rows' mean, averaged over the ranks (equal shares)
        stats["policy_std"] = float(all_sum(log_std.exp().mean())) / world()[1]
    return stats
