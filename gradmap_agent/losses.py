"""The primal-dual pieces of GradMA / GradMAP: Lagrangian of a rollout, dual ascent, proximal surrogate,
per-agent gradient clipping.

Notation (``docs/gradmap.md``): B days, T steps, N agents, n feeder nodes; ``c[b,t,i]`` cost ($),
``d[b,t,i]`` device-constraint violation (kW for batteries and generators, K for heat pumps; on the last step
it includes the terminal shortfall: `device_constraint_violation`), ``v[b,t,n]`` node voltage
(pu), where every node of a row-step whose power flow failed is scored at 0 pu (voltage collapse:
`gridedge_env.metrics.scored_voltages`). With device multipliers ``lam`` ([N]) and network multipliers ``mu``
([T, n], per node and time of day)

    L = (1/B) sum_{b,t} ( sum_i (c[b,t,i] + lam[i] d[b,t,i]) + sum_n (mu[t,n] w + rho/2 w^2)[b,t,n] ),
    w[b,t,n] = relu(v - (v_max - margin)) + relu((v_min + margin) - v).

A failed power flow is therefore never free: its row-step pays ``mu[t,n] (v_min + margin) + rho/2 (v_min +
margin)^2`` at every node, a constant without gradient (the non-converged solve's voltages are not
differentiated), and the dual step counts it as that violation; its cost and device terms keep their gradient.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from gridedge_env.metrics import VIOLATION_METRICS, daily_violation_units, scored_voltages

__all__ = [
    "MULTIPLIER_FIELDS",
    "Multipliers",
    "device_budgets",
    "device_constraint_violation",
    "clip_grad_norm_per_agent_",
    "dual_update",
    "proximal_surrogate",
    "step_lagrangian",
    "voltage_violation",
]


class Multipliers:
    """Lagrange multipliers: ``device`` [N] $ per unit of device violation and step (one per agent: $ per kW
    for batteries and generators, $ per K for heat pumps), ``voltage`` [T, n] $ per pu of voltage violation and
    step, per node and time of day. All float64 and >= 0. Build one with `for_sim`.

    Args:
        agent_slices: Device type -> its agents' slice of the agent axis (``sim.agent_slices``).
        violation_units: [N] factor from a step's device violation to its budget's unit
            (`gridedge_env.metrics.daily_violation_units`: kW -> kWh, K -> K-steps).
        n_steps, n_nodes: Shapes.
        device_init, voltage_init: Initial values.
    """

    def __init__(
        self,
        agent_slices: dict[str, slice],
        violation_units: torch.Tensor,
        n_steps: int,
        n_nodes: int,
        device_init: float = 0.0,
        voltage_init: float = 0.0,
        device: str | torch.device = "cpu",
    ):
        self.agent_slices = dict(agent_slices)
        self.violation_units = violation_units.to(dtype=torch.float64, device=device)
        n_agents = len(self.violation_units)
        self.device = torch.full((n_agents,), float(device_init), dtype=torch.float64, device=device)
        self.voltage = torch.full((n_steps, n_nodes), float(voltage_init), dtype=torch.float64, device=device)
        self.updates = 0
        """Dual steps taken so far (`dual_update`'s step size decays with it)."""

    @classmethod
    def for_sim(cls, sim, device_init: float = 0.0, voltage_init: float = 0.0) -> Multipliers:
        """The multipliers of ``sim``'s agents, steps and nodes, on its device."""
        return cls(
            sim.agent_slices,
            daily_violation_units(sim),
            sim.n_steps,
            sim.n_nodes,
            device_init=device_init,
            voltage_init=voltage_init,
            device=sim.device,
        )

    def state_dict(self) -> dict:
        return {"device": self.device.clone(), "voltage": self.voltage.clone(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.device = state["device"].clone().to(self.device.device)
        self.voltage = state["voltage"].clone().to(self.voltage.device)
        self.updates = int(state["updates"])

    def summary(self) -> dict[str, float]:
        """Mean and max per device type (``battery_multiplier_mean``, ..., each in its own unit) and of the
        network multipliers (``voltage_multiplier_mean``, ``voltage_multiplier_max``): metrics.csv columns."""
        out = {}
        for name, sl in self.agent_slices.items():
            if sl.stop > sl.start:
                out[f"{name}_multiplier_mean"] = float(self.device[sl].mean())
                out[f"{name}_multiplier_max"] = float(self.device[sl].max())
        out["voltage_multiplier_mean"] = float(self.voltage.mean())
        out["voltage_multiplier_max"] = float(self.voltage.max())
        return out


#: metrics.csv columns of `Multipliers.summary`, in order.
MULTIPLIER_FIELDS = tuple(
    f"{name}_multiplier_{stat}" for name in (*VIOLATION_METRICS, "voltage") for stat in ("mean", "max")
)


def voltage_violation(v_mag_pu: torch.Tensor, v_min_pu: float, v_max_pu: float, margin_pu: float = 0.0):
    """Distance outside the band tightened by ``margin_pu`` on both sides, pu (same shape as ``v_mag_pu``)."""
    return torch.relu(v_mag_pu - (v_max_pu - margin_pu)) + torch.relu((v_min_pu + margin_pu) - v_mag_pu)


def device_constraint_violation(result, multipliers: Multipliers) -> torch.Tensor:
    """[B, N] violation of each agent's device constraint in one step, in the step's unit (kW for batteries and
    generators, K for heat pumps): the step's ``device_violation`` plus, on the day's last step, the terminal
    shortfall (`gridedge_env.core.StepResult.terminal_shortfall`) converted into the same unit, so that one
    kWh a battery ends short counts as one kWh undelivered and one K a heat pump ends short of its initial
    temperature as one K-step of comfort violation (zero on other steps and for generators).

    Why a constraint and not only the terminal price in ``cost``: the price (0.50 $/kWh) is three orders of
    magnitude below the network terms' marginal value in the evening, so a learner that sees only the price
    sells the stored energy for a little voltage support and ends the day short (``docs/gradmap.md``, The
    terminal condition as a constraint). As part of the device constraint it is priced by the agent's own
    multiplier, which rises until the budget holds.
    """
    return result.device_violation + result.terminal_shortfall / multipliers.violation_units.to(
        result.terminal_shortfall.dtype
    )


def step_lagrangian(
    result,
    t: int,
    multipliers: Multipliers,
    v_min_pu: float,
    v_max_pu: float,
    margin_pu: float = 0.0,
    voltage_quadratic: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Contribution of one step to ``B * L`` (summed over rows, not yet divided by B).

    Args:
        result: The core's `StepResult` of step ``t`` (with its autograd graph).
        t: Step index (time of day) 0..T-1.
        multipliers: Current multipliers (constants here).
        v_min_pu, v_max_pu: Voltage band.
        margin_pu: Tightening of the band for the training constraint.
        voltage_quadratic: ``rho`` of the augmented Lagrangian's ``(rho / 2) w^2`` per node-step ($ per pu^2):
            it grows with the excursion, so the largest ones weigh most (0: the plain Lagrangian).

    Returns:
        ``(total, device_violation [B, N], voltage_violation [B, n])``: the scalar sum over the rows of cost +
        multiplier-weighted violations, and the (detached) violations for the dual update. A row whose power
        flow failed counts every node at 0 pu (module docstring): ``w = v_min + margin`` there, without gradient.
    """
    v = scored_voltages(result.v_mag_pu, result.converged)
    w = voltage_violation(v, v_min_pu, v_max_pu, margin_pu)
    dev = device_constraint_violation(result, multipliers)
    total = result.cost.sum() + (multipliers.device * dev).sum() + (multipliers.voltage[t] * w).sum()
    if voltage_quadratic:
        total = total + 0.5 * voltage_quadratic * (w * w).sum()
    return total, dev.detach(), w.detach()


def device_budgets(multipliers: Multipliers, config) -> torch.Tensor:
    """[N] float64 budget of every agent per day in its type's unit (kWh or K-steps), from ``config``'s
    ``<metric>_budget`` fields (`gradmap_agent.config.LagrangianConfig`; metric names in
    `gridedge_env.metrics.VIOLATION_METRICS`)."""
    budget = torch.zeros_like(multipliers.device)
    for name, sl in multipliers.agent_slices.items():
        budget[sl] = getattr(config, f"{VIOLATION_METRICS[name]}_budget")
    return budget


def dual_update(
    multipliers: Multipliers,
    device_violation: torch.Tensor,
    voltage_violation_: torch.Tensor,
    config,
) -> None:
    """Projected dual ascent: ``lam <- clip(lam + rho_k * (violation - budget), 0, max)`` (in place), with the
    step ``rho_k = rho / sqrt(1 + k / k_0)`` after ``k`` earlier steps (``k_0``: ``dual_lr_decay_iterations``)
    and the excess ``violation - budget`` clipped to ``+- dual_excess_clip * budget`` (where that is > 0).

    The rollouts' violations are noisy estimates of their expectations, so a constant step keeps the
    multipliers moving; the decaying one (sum of steps unbounded, a standard stochastic-approximation
    schedule) lets them settle while they can still grow without bound if a constraint stays violated.

    The constraints are ``E[violation] <= budget``: with a zero budget the multipliers can only grow (the
    violations are non-negative), with a small positive one they also come down again when the policy
    keeps well inside, as in Lagrangian constrained RL.

    Args:
        multipliers: Updated in place.
        device_violation: [T, B, N] device violations of the rollout (kW or K per step).
        voltage_violation_: [T, B, n] margin-tightened voltage violations (a failed row: ``v_min + margin``
            at every node, `step_lagrangian`).
        config: `gradmap_agent.config.LagrangianConfig`: the dual steps (``device_dual_lr`` per kWh or K-step
            of an agent's daily violation, ``voltage_dual_lr`` per pu of violation, mean over days), the
            per-type budgets (per device and day, `device_budgets`) and ``voltage_violation_budget`` (per node
            and step), ``dual_excess_clip`` and the upper bound ``max_multiplier``.

    The device step uses each agent's violation summed over the day in its budget's unit and averaged over the
    rows; the network step the violation of node ``n`` at step ``t`` averaged over the rows.
    """
    decay = 1.0
    if config.dual_lr_decay_iterations:
        decay = (1.0 + multipliers.updates / config.dual_lr_decay_iterations) ** -0.5
    day_dev = device_violation.to(torch.float64).sum(dim=0).mean(dim=0) * multipliers.violation_units  # [N]
    excess = _clipped_excess(day_dev, device_budgets(multipliers, config), config.dual_excess_clip)
    mean_w = voltage_violation_.to(torch.float64).mean(dim=1)  # [T, n]
    v_excess = _clipped_excess(mean_w, mean_w.new_tensor(config.voltage_violation_budget), config.dual_excess_clip)
    multipliers.device = (multipliers.device + decay * config.device_dual_lr * excess).clamp(0.0, config.max_multiplier)
    multipliers.voltage = (multipliers.voltage + decay * config.voltage_dual_lr * v_excess).clamp(
        0.0, config.max_multiplier
    )
    multipliers.updates += 1


def _clipped_excess(violation: torch.Tensor, budget: torch.Tensor, clip: float) -> torch.Tensor:
    """``violation - budget`` clipped to ``+- clip * budget`` where that bound is > 0 (a zero budget, or
    ``clip`` 0, leaves it unclipped: its clip would stop the dual ascent)."""
    excess = violation - budget
    bound = clip * budget
    return torch.where(bound > 0, torch.minimum(torch.maximum(excess, -bound), bound), excess)


def proximal_surrogate(
    a_new: torch.Tensor, a_old: torch.Tensor, grad: torch.Tensor, clip_radius: float | None
) -> tuple[torch.Tensor, dict]:
    """GradMAP's surrogate, linear in the action change, with a trust region on the actions.

    ``S = sum max(g * da, g * clip(da, -r, r))`` with ``da = a_new - a_old``. The max is the pessimistic
    (upper) bound for a minimisation, as in PPO's clip: an action that has moved more than ``r`` in the
    direction that lowers the Lagrangian gets no further gradient, one that moved the wrong way is still
    pulled back. ``clip_radius=None`` drops the clip: ``dS/dtheta = sum g * da/dtheta`` is then the chain
    rule of the Lagrangian (GradMA).

    Args:
        a_new: [..., N] actions of the current policy on the stored observations and noise (with graph).
        a_old: [..., N] the rollout's actions.
        grad: [..., N] dL/da of the rollout.
        clip_radius: Trust-region radius r on every action (None: no clipping).

    Returns:
        ``(S, stats)`` with stats ``action_change`` (mean |da|) and ``clip_fraction`` (share of actions
        outside the radius), both floats.
    """
    da = a_new - a_old
    lin = grad * da
    if clip_radius is not None:
        lin = torch.maximum(lin, grad * da.clamp(-clip_radius, clip_radius))
    s = lin.sum()
    with torch.no_grad():
        stats = {
            "action_change": float(da.abs().mean()),
            "clip_fraction": float((da.abs() > clip_radius).to(torch.float64).mean())
            if clip_radius is not None
            else 0.0,
        }
    return s, stats


def clip_grad_norm_per_agent_(params: Iterable[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """Clip each agent's gradient to ``max_norm`` separately (in place); never a global norm.

    Every parameter has the agent axis first; agent ``i``'s norm is taken over slice ``i`` of all of them,
    and only that slice is scaled. Agents with a norm below the bound are left unchanged.

    Returns:
        [N] float64 norms before clipping.
    """
    params = [p for p in params if p.grad is not None]
    sq = None
    for p in params:
        s = p.grad.detach().to(torch.float64).pow(2).flatten(1).sum(dim=1)
        sq = s if sq is None else sq + s
    norms = sq.sqrt()
    if max_norm is not None:
        scale = (max_norm / (norms + 1e-12)).clamp(max=1.0)
        for p in params:
            p.grad.mul_(scale.to(p.grad.dtype).view(-1, *([1] * (p.grad.dim() - 1))))
    return norms
