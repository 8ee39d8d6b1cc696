"""The perfect-foresight optimum: every agent's actions of a whole day optimised jointly, with full knowledge.

For each batch of days, `plan_days` minimises the augmented Lagrangian of the day over all actions
``a`` [T, B, N] directly (no policy), through the differentiable core:

    L_rho(a, lam, nu) = sum_{b,t,i} c[b,t,i](a) + sum_{b,t,n} psi(g[b,t,n](a), lam[t,b,n], rho_v)
                                                  + sum_{b,t,i} psi(d[b,t,i](a), nu[t,b,i], rho_d),
    psi(g, lam, rho) = (relu(lam + rho g)^2 - lam^2) / (2 rho)        (Rockafellar's form for g <= 0)

with ``g = max(v - (v_max - m), (v_min + m) - v)`` the signed distance of each node voltage outside the band
tightened by the margin ``m`` and ``d >= 0`` each agent's device violation (constraint ``d <= 0``). Adam
minimises ``L_rho`` over ``a`` (`optimise_actions`, projected onto [-1, 1]); every
`OracleConfig.update_every` steps the multipliers take the exact augmented-Lagrangian step
``lam <- relu(lam + rho g)`` (one multiplier per constraint: node, step and day) and ``rho`` grows by
`OracleConfig.rho_growth` up to `OracleConfig.rho_max`. The state at ``t = 0`` holds the whole day's
household load, PV, temperatures and prices, so this is the optimum with perfect foresight (up to Adam's
convergence; the problem is non-convex through the AC power flow).

`PerfectForesightPolicy` wraps it as a ``policy(sim, state)``: at the first step of an episode it plans the
whole day of every row, then replays the plan, so `gridedge_run.evaluate_policy` evaluates it on
exactly the same episodes and metrics as every other method (``gridedge evaluate --method oracle``).
``docs/baselines.md`` has
the design choices and results.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from baselines.rules import RULES
from gridedge_env.metrics import RolloutMetrics
from gridedge_env.simbench import StepPenalty, fixed_penalty, rollout_objective

__all__ = ["OracleConfig", "PerfectForesightPolicy", "optimise_actions", "plan_days"]

#: ``policy(sim, state) -> actions [B, N]``
Policy = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class OracleConfig:
    """Settings of the perfect-foresight optimisation (defaults: IEEE-123 with 1,000 agents)."""

    iterations: int = 300
    """Adam steps per batch of days (one forward and backward rollout each)."""
    lr: float = 0.05
    """Adam learning rate on the actions (in [-1, 1]), decayed to lr / 10 on a cosine schedule."""
    init: str = "droop"
    """Rule whose actions along its own rollout are the starting point (a name in `baselines.rules.RULES`)."""
    margin_pu: float = 0.001
    """The voltage constraint uses [v_min + margin, v_max - margin], so the plan keeps strictly inside."""
    update_every: int = 10
    """Adam steps between multiplier updates."""
    rho_voltage: float = 1e5
    """Initial penalty parameter of the voltage constraints, $ per pu^2 per node-step."""
    rho_device: float = 10.0
    """Initial penalty parameter of the device constraints, $ per (kW or K)^2 per agent-step."""
    rho_growth: float = 1.5
    """Both penalty parameters are multiplied by this after every multiplier update."""
    rho_max_factor: float = 100.0
    """Penalty parameters stop growing at this multiple of their initial values."""
    max_multiplier: float = 1e6
    """Upper bound of every multiplier, $ per unit (guards the infeasible device constraints: heat pumps
    that cannot hold their band at full power on the coldest days)."""

    def __post_init__(self) -> None:
        problems = []
        if self.iterations < 1 or self.update_every < 1:
            problems.append(f"iterations and update_every must be >= 1, got {self.iterations}, {self.update_every}")
        for name in ("lr", "rho_voltage", "rho_device", "max_multiplier"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.margin_pu >= 0:
            problems.append(f"margin_pu must be >= 0, got {self.margin_pu}")
        if not (self.rho_growth >= 1 and self.rho_max_factor >= 1):
            problems.append(f"rho_growth and rho_max_factor must be >= 1, got {self.rho_growth}, {self.rho_max_factor}")
        if self.init not in RULES:
            problems.append(f"init must be one of {sorted(RULES)}, got {self.init!r}")
        if problems:
            raise ValueError("invalid OracleConfig: " + "; ".join(problems))


def _psi(g: torch.Tensor, lam: torch.Tensor, rho: float) -> torch.Tensor:
    """Augmented-Lagrangian term of the constraints ``g <= 0`` with multipliers ``lam``, summed."""
    return ((torch.relu(lam + rho * g) ** 2 - lam**2) / (2.0 * rho)).sum()


class _AugmentedLagrangian:
    """Multipliers [T, B, n] (voltage) and [T, B, N] (device) and penalty parameters of one batch of days."""

    def __init__(self, sim, batch: int, config: OracleConfig):
        self.config = config
        self.v_lo = sim.config.v_min_pu + config.margin_pu
        self.v_hi = sim.config.v_max_pu - config.margin_pu
        zeros = lambda *shape: torch.zeros(shape, dtype=sim.dtype, device=sim.device)  # noqa: E731
        self.lam_voltage = zeros(sim.n_steps, batch, sim.n_nodes)
        self.lam_device = zeros(sim.n_steps, batch, sim.n_agents)
        self.rho_voltage = config.rho_voltage
        self.rho_device = config.rho_device

    def voltage_constraint(self, v_mag_pu: torch.Tensor) -> torch.Tensor:
        """Signed distance outside the tightened band, pu (<= 0 inside)."""
        return torch.maximum(v_mag_pu - self.v_hi, self.v_lo - v_mag_pu)

    def penalty(self, k: int, r, ok: torch.Tensor) -> torch.Tensor:
        """`gridedge_env.simbench.StepPenalty` of step ``k`` (failed power-flow rows masked out)."""
        g = ok * self.voltage_constraint(r.v_mag_pu)
        return _psi(g, self.lam_voltage[k], self.rho_voltage) + _psi(
            ok * r.device_violation, self.lam_device[k], self.rho_device
        )

    def update(self, iteration: int, results) -> None:
        """Every `update_every` steps: ``lam <- clip(lam + rho g, 0, max)``, then grow ``rho``."""
        cfg = self.config
        if (iteration + 1) % cfg.update_every:
            return
        with torch.no_grad():
            for k, r in enumerate(results):
                ok = r.converged[:, None].to(self.lam_voltage.dtype)
                g = ok * self.voltage_constraint(r.v_mag_pu.detach())
                self.lam_voltage[k] = (self.lam_voltage[k] + self.rho_voltage * g).clamp(0.0, cfg.max_multiplier)
                d = ok * r.device_violation.detach()
                self.lam_device[k] = (self.lam_device[k] + self.rho_device * d).clamp(0.0, cfg.max_multiplier)
        self.rho_voltage = min(self.rho_voltage * cfg.rho_growth, cfg.rho_voltage * cfg.rho_max_factor)
        self.rho_device = min(self.rho_device * cfg.rho_growth, cfg.rho_device * cfg.rho_max_factor)


def optimise_actions(
    sim,
    state,
    *,
    iterations: int = 150,
    lr: float = 0.05,
    w_voltage: float = 1e4,
    w_device: float = 10.0,
    init: Policy | None = None,
    progress: Callable[[int, int], None] | None = None,
    penalty: StepPenalty | None = None,
    after_iteration: Callable[[int, list], None] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Centralised, perfect-foresight optimisation of every action of the episodes in ``state``.

    Minimises ``sum(cost) + w_device * sum(device_violation) + w_voltage * sum(voltage_violation)`` (or
    ``sum(cost)`` plus ``penalty``'s terms) over the actions [T, B, N] by Adam through the differentiable
    core (learning rate decayed from ``lr`` to ``lr / 10`` on a cosine schedule), projecting the actions
    onto [-1, 1] after every update. Starts from the actions ``init`` would take along its own rollout
    (default: all zeros). Only converged power flows count (the same mask as the trainers').

    Args:
        sim: The simulator.
        state: Initial state (``t = 0``) of the episodes to optimise.
        iterations: Adam steps (one forward + backward rollout each).
        lr: Adam learning rate (actions are in [-1, 1]).
        w_voltage: Penalty per pu-step of voltage violation, $.
        w_device: Penalty per unit of device violation (kW or K) per step, $.
        init: Optional policy whose rollout actions are the starting point.
        progress: Optional ``callback(done, total)``.
        penalty: Optional constraint terms of every step (`StepPenalty`), replacing the fixed weights
            (e.g. the augmented Lagrangian of `plan_days`).
        after_iteration: Optional ``callback(iteration, results)`` after every Adam step, with that
            iteration's StepResults (from before the step): e.g. a multiplier update that ``penalty`` reads.

    Returns:
        ``(actions [T, B, N], metrics)``: the standard metrics (`gridedge_env.metrics`) of the final actions
        plus the objective's history (``objective_first``, ``objective_last``) and ``seconds``.
    """
    t0 = time.perf_counter()
    shape = (sim.n_steps, state.batch_size, sim.n_agents)
    if init is None:
        start = torch.zeros(shape, dtype=sim.dtype, device=sim.device)
    else:
        acts, s = [], state
        with torch.no_grad():
            for _ in range(sim.n_steps):
                a = init(sim, s)
                s = sim.step(s, a).state
                acts.append(a)
        start = torch.stack(acts)
    actions = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([actions], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(iterations, 1), eta_min=0.1 * lr)
    penalty = fixed_penalty(w_voltage, w_device) if penalty is None else penalty
    history = []
    for it in range(iterations):
        opt.zero_grad()
        objective, results = rollout_objective(sim, state, actions, penalty)
        objective.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            actions.clamp_(-1.0, 1.0)
        history.append(float(objective.detach()))
        if after_iteration is not None:
            after_iteration(it, results)
        if progress is not None:
            progress(it + 1, iterations)
    with torch.no_grad():
        _, results = rollout_objective(sim, state, actions, penalty)
    summary = RolloutMetrics(sim)
    for r in results:
        summary.add(r)
    metrics = summary.summary(state.batch_size)
    metrics.update(
        objective_first=history[0] if history else None,
        objective_last=history[-1] if history else None,
        seconds=time.perf_counter() - t0,
    )
    return actions.detach(), metrics


def plan_days(
    sim, state, config: OracleConfig = OracleConfig(), progress: Callable[[int, int], None] | None = None
) -> tuple[torch.Tensor, dict]:
    """Optimise every action of the episodes in ``state`` (``t = 0``) by the augmented Lagrangian.

    Args:
        sim: The simulator.
        state: Initial state of B days (all of them are planned together; days do not interact).
        config: `OracleConfig`.
        progress: Optional ``callback(done_iterations, total_iterations)``.

    Returns:
        ``(actions [T, B, N], metrics)``: the plan, and `optimise_actions`' metrics
        of it plus the largest multipliers.
    """
    if state.t != 0:
        raise ValueError(f"the oracle plans whole days from their first step, got a state at step {state.t}")
    al = _AugmentedLagrangian(sim, state.batch_size, config)
    actions, metrics = optimise_actions(
        sim,
        state,
        iterations=config.iterations,
        lr=config.lr,
        init=RULES[config.init],
        progress=progress,
        penalty=al.penalty,
        after_iteration=al.update,
    )
    metrics.update(voltage_multiplier_max=float(al.lam_voltage.max()), device_multiplier_max=float(al.lam_device.max()))
    return actions, metrics


class PerfectForesightPolicy:
    """``policy(sim, state) -> actions [B, N]`` that plans each episode's whole day at its first step
    (`plan_days`) and replays the plan; the simulator is deterministic, so the replay is the planned rollout.

    Args:
        config: `OracleConfig`.
        progress: Optional ``callback(done_iterations, total_iterations)`` of each plan.

    Attributes:
        plans: Metrics of every plan made so far (one per batch of days), with its ``days``.
    """

    def __init__(self, config: OracleConfig = OracleConfig(), progress: Callable[[int, int], None] | None = None):
        self.config = config
        self.progress = progress
        self.plans: list[dict] = []
        self._actions: torch.Tensor | None = None
        self._state0 = None

    def __call__(self, sim, state) -> torch.Tensor:
        if state.t == 0:
            with torch.enable_grad():  # evaluation loops run under no_grad; planning needs the gradient
                self._actions, metrics = plan_days(sim, state, self.config, self.progress)
            self._state0 = state
            self.plans.append({"days": [int(d) for d in state.day_idx], **metrics})
        elif self._actions is None or not torch.equal(state.day_idx, self._state0.day_idx):
            raise ValueError("the perfect-foresight policy must see each episode from its first step (t = 0)")
        return self._actions[state.t]
