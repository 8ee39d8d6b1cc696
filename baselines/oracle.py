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
`OracleConfig.rho_growth` up to `OracleConfig.rho_max_factor` times its start. The state at ``t = 0``
holds the whole day's household load, PV, temperatures and prices, so this is the optimum with perfect
foresight (a local one: the problem is non-convex through the AC power flow).

**KKT residual.** The gradient of ``L_rho`` is the gradient of the ordinary Lagrangian
``L(a, mu) = sum c + sum mu_v g + sum mu_d d`` at the multipliers ``mu = relu(lam + rho g)``. At the last
iterate ``a`` of every multiplier window (`OracleConfig.update_every` steps with fixed ``lam``, ``rho``) and
at the iteration cap, `kkt_residual` measures

- stationarity: ``|P(a - G) - a|_2 / |P(a0 - G0) - a0|_2``, with ``P`` the projection onto [-1, 1], ``G``
  the mean of the Lagrangian's gradients over the window's iterates and ``a0``, ``G0`` the start and its
  gradient. The costs and constraints have kinks (a battery's projection at full or empty, ``|p|`` of its
  degradation cost), where the gradient at one point need not vanish even at a minimum; the mean over
  nearby iterates is an element of Goldstein's ``eps``-subdifferential with ``eps`` the window's diameter
  (``window_diameter``, largest change of any action within the window), the standard stationarity test
  of nonsmooth optimisation;
- primal feasibility: the largest voltage excursion outside the tightened band (pu) and the largest device
  violation of any agent-step (kW or K), and power flows that failed;
- complementary slackness: ``sum mu |g|`` over every constraint, relative to ``max(|sum c|, 1 $)``.

The plan stops when all four are within `OracleConfig`'s tolerances, or at the iteration cap; ``kkt``
reports the last residual, ``met`` and the ``iterations`` run.

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
    """Iteration cap: Adam steps per batch of days (one forward and backward rollout each), unless the KKT
    tolerances below are met first (checked at every multiplier update)."""
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
    """Upper bound of every multiplier, $ per unit (guards device constraints that no schedule can meet)."""
    stationarity_tol: float = 1e-3
    """KKT tolerance: projected gradient of the Lagrangian, relative to the one at the start (`kkt_residual`)."""
    complementarity_tol: float = 1e-3
    """KKT tolerance: sum of multiplier x |constraint| over all constraints, relative to the plan's |cost|."""
    voltage_tol_pu: float = 1e-4
    """KKT tolerance: largest voltage excursion outside the margin-tightened band, pu."""
    device_tol: float = 1e-3
    """KKT tolerance: largest device violation of any agent-step (kW for batteries and generators, K for
    heat pumps)."""

    def __post_init__(self) -> None:
        problems = []
        if self.iterations < 1 or self.update_every < 1:
            problems.append(f"iterations and update_every must be >= 1, got {self.iterations}, {self.update_every}")
        for name in (
            "lr",
            "rho_voltage",
            "rho_device",
            "max_multiplier",
            "stationarity_tol",
            "complementarity_tol",
            "voltage_tol_pu",
            "device_tol",
        ):
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


def _projected_step(actions: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """``P(a - grad) - a`` with ``P`` the projection onto [-1, 1]: zero exactly at a stationary point of a
    box-constrained problem (a component at a bound may keep a gradient pointing out of the box)."""
    return (actions - gradient).clamp(-1.0, 1.0) - actions


class _AugmentedLagrangian:
    """Multipliers [T, B, n] (voltage) and [T, B, N] (device), penalty parameters and the KKT test of one
    batch of days."""

    def __init__(self, sim, batch: int, config: OracleConfig):
        self.config = config
        self.v_lo = sim.config.v_min_pu + config.margin_pu
        self.v_hi = sim.config.v_max_pu - config.margin_pu
        zeros = lambda *shape: torch.zeros(shape, dtype=sim.dtype, device=sim.device)  # noqa: E731
        self.lam_voltage = zeros(sim.n_steps, batch, sim.n_nodes)
        self.lam_device = zeros(sim.n_steps, batch, sim.n_agents)
        self.rho_voltage = config.rho_voltage
        self.rho_device = config.rho_device
        self.start_norm: float | None = None  # |P(a0 - grad0) - a0|, the stationarity residual's scale
        self.window: list[torch.Tensor] = []  # [gradient sum, action min, action max] since the last update
        self.window_len = 0
        self.kkt: dict | None = None  # the last `kkt_residual`

    def voltage_constraint(self, v_mag_pu: torch.Tensor) -> torch.Tensor:
        """Signed distance outside the tightened band, pu (<= 0 inside)."""
        return torch.maximum(v_mag_pu - self.v_hi, self.v_lo - v_mag_pu)

    def penalty(self, k: int, r, ok: torch.Tensor) -> torch.Tensor:
        """`gridedge_env.simbench.StepPenalty` of step ``k`` (failed power-flow rows masked out)."""
        g = ok * self.voltage_constraint(r.v_mag_pu)
        return _psi(g, self.lam_voltage[k], self.rho_voltage) + _psi(
            ok * r.device_violation, self.lam_device[k], self.rho_device
        )

    @torch.no_grad()
    def check(self, iteration: int, actions: torch.Tensor, gradient: torch.Tensor, results) -> bool:
        """`optimise_actions`' ``check``: called with every gradient, before the Adam step. Every
        `update_every` steps (and at the iteration cap) measure `kkt_residual` at ``actions``; stop if it
        meets the tolerances, else take the multiplier step."""
        cfg = self.config
        if self.start_norm is None:
            self.start_norm = float(_projected_step(actions, gradient).norm())
        if self.window_len == 0:
            self.window = [gradient.clone(), actions.clone(), actions.clone()]
        else:
            self.window[0] += gradient
            torch.minimum(self.window[1], actions, out=self.window[1])
            torch.maximum(self.window[2], actions, out=self.window[2])
        self.window_len += 1
        last = iteration + 1 == cfg.iterations
        if (iteration + 1) % cfg.update_every and not last:
            return False
        self.kkt = self.kkt_residual(actions, self.window[0] / self.window_len, results)
        self.kkt.update(iterations=iteration + 1, window_diameter=float((self.window[2] - self.window[1]).max()))
        self.window_len = 0
        if self.kkt["met"] or last:
            return True
        self._update(results)
        return False

    def kkt_residual(self, actions: torch.Tensor, gradient: torch.Tensor, results) -> dict:
        """KKT residual of the plan ``actions`` (module docstring) with ``gradient`` the Lagrangian's gradient.

        The Lagrangian's multipliers are ``relu(lam + rho g)``, the gradient of each `_psi` term, so the
        augmented Lagrangian's gradient is the ordinary Lagrangian's gradient at them.
        """
        cfg = self.config
        stationarity = float(_projected_step(actions, gradient).norm()) / max(self.start_norm, 1e-300)
        voltage_pu, device, slack, cost, failures = 0.0, 0.0, 0.0, 0.0, 0
        for k, r in enumerate(results):
            ok = r.converged[:, None].to(actions.dtype)
            failures += int((~r.converged).sum())
            g = ok * self.voltage_constraint(r.v_mag_pu.detach())
            d = ok * r.device_violation.detach()
            mult_v = torch.relu(self.lam_voltage[k] + self.rho_voltage * g)
            mult_d = torch.relu(self.lam_device[k] + self.rho_device * d)
            slack += float((mult_v * g.abs()).sum() + (mult_d * d).sum())
            voltage_pu = max(voltage_pu, float(torch.relu(g).max()))
            device = max(device, float(d.max()))
            cost += float((ok * r.cost.detach()).sum())
        complementarity = slack / max(abs(cost), 1.0)
        met = (
            stationarity <= cfg.stationarity_tol
            and complementarity <= cfg.complementarity_tol
            and voltage_pu <= cfg.voltage_tol_pu
            and device <= cfg.device_tol
            and failures == 0
        )
        return {
            "stationarity": stationarity,
            "complementarity": complementarity,
            "voltage_infeasibility_pu": voltage_pu,
            "device_infeasibility": device,
            "pf_failures": failures,
            "met": met,
        }

    def _update(self, results) -> None:
        """The multiplier step ``lam <- clip(lam + rho g, 0, max)``, then ``rho`` grows."""
        cfg = self.config
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
    check: Callable[[int, torch.Tensor, torch.Tensor, list], bool] | None = None,
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
        check: Optional ``check(iteration, actions, gradient, results) -> stop`` after every gradient, before
            the Adam step, with the iteration's actions, the objective's gradient and StepResults (e.g. a
            multiplier update that ``penalty`` reads); True stops at these actions.

    Returns:
        ``(actions [T, B, N], metrics)``: the standard metrics (`gridedge_env.metrics`) of the final actions
        plus the objective's history (``objective_first``, ``objective_last``), the ``iterations`` run and
        ``seconds``.
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
        history.append(float(objective.detach()))
        stop = check is not None and check(it, actions.detach(), actions.grad, results)
        if progress is not None:
            progress(it + 1, iterations)
        if stop:
            break
        opt.step()
        sched.step()
        with torch.no_grad():
            actions.clamp_(-1.0, 1.0)
    with torch.no_grad():
        _, results = rollout_objective(sim, state, actions, penalty)
    summary = RolloutMetrics(sim)
    for r in results:
        summary.add(r)
    metrics = summary.summary(state.batch_size)
    metrics.update(
        objective_first=history[0] if history else None,
        objective_last=history[-1] if history else None,
        iterations=len(history),
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
        ``(actions [T, B, N], metrics)``: the plan, and `optimise_actions`' metrics of it plus the largest
        multipliers and ``kkt``, the KKT residual at the plan (module docstring): ``stationarity``,
        ``complementarity``, ``voltage_infeasibility_pu``, ``device_infeasibility``, ``pf_failures``,
        ``window_diameter``, ``iterations`` and ``met`` (every tolerance met).
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
        check=al.check,
    )
    metrics.update(
        kkt=al.kkt,
        voltage_multiplier_max=float(al.lam_voltage.max()),
        device_multiplier_max=float(al.lam_device.max()),
    )
    return actions, metrics


class PerfectForesightPolicy:
    """``policy(sim, state) -> actions [B, N]`` that plans each episode's whole day at its first step
    (`plan_days`) and replays the plan; the simulator is deterministic, so the replay is the planned rollout.

    Args:
        config: `OracleConfig`.
        progress: Optional ``callback(done_iterations, total_iterations)`` of each plan.

    Attributes:
        plans: One record per plan made so far (one per batch of days): its ``days``, ``seconds``, the
            objective's first and last values and the KKT residual (`plan_days`' ``kkt``).
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
            self.plans.append(
                {
                    "days": [int(d) for d in state.day_idx],
                    "seconds": metrics["seconds"],
                    "objective_first": metrics["objective_first"],
                    "objective_last": metrics["objective_last"],
                    **metrics["kkt"],
                }
            )
        elif self._actions is None or not torch.equal(state.day_idx, self._state0.day_idx):
            raise ValueError("the perfect-foresight policy must see each episode from its first step (t = 0)")
        return self._actions[state.t]
