"""The perfect-foresight optimum: every agent's actions of a whole day optimised jointly, with full knowledge.

**The problem.** For each batch of days `plan_days` solves, over every action of the day,

    minimise    sum_{b,t,i} c[b,t,i]                      (the simulator's cost: electricity, degradation, fuel,
                                                            terminal condition at its price)
    subject to  v_min + m <= v[b,t,n] <= v_max - m        (every node voltage; m = `OracleConfig.margin_pu`)
                no device violation                       (requests within the battery's state-of-charge and
                                                            the generator's ramp limits, indoor temperature
                                                            within the comfort band)

The state at ``t = 0`` holds the whole day's household load, PV, temperatures and prices, so this is the
optimum with perfect foresight (a local one: the AC power flow makes the problem non-convex).

**Variables.** The planner does not move the actions ``a`` in [-1, 1] themselves but ``u`` in [-1, 1], one
per action, mapped onto what the device can do at its state of that step (`FeasibleMap`): a battery's
``u > 0`` charges at ``u`` times the most its state of charge allows, ``u < 0`` discharges likewise; a
generator's ``u`` spans its ramp window (``-1`` the most output); a heat pump's ``u`` spans the electrical
fractions that keep the next indoor temperature inside the comfort band (`heatpump_comfort_actions`). So the
device constraints hold by construction wherever they can hold at all; a heat pump that cannot stay in its
band (too cold for full load) is held at the nearest bound and its comfort violation stays a constraint.

**Method.** An augmented Lagrangian (outer loop) over the voltage constraints ``g = max(v - (v_max - m),
(v_min + m) - v) <= 0`` (one multiplier per node, step and day), the remaining device violation ``d <= 0``
(per agent, step and day) and the terminal condition, written with the signed deficit ``x``
(`gridedge_env.core.Sim.terminal_deficit`, electrical kWh) as ``price * s, s >= x, s >= 0`` with ``s``
minimised out in closed form (its multiplier lies in [0, price]):

    L_rho(u) = sum (c - terminal cost) + sum psi(g, lam_v, rho_v) + sum psi(d, lam_d, rho_d)
               + sum h(x, lam_T, rho_T)
    psi(g, lam, rho) = (relu(lam + rho g)^2 - lam^2) / (2 rho)
    h(x, lam, rho)   = psi(x, lam, rho) where lam + rho x <= price, else price x + const (slope price)

Its inner minimiser is scipy's L-BFGS-B on the box [-1, 1]. The costs have a kink where a battery is idle
(``|p|`` of its degradation cost, its charge and discharge efficiencies), which the map puts at ``u = 0``: each
battery coordinate is held to one side of it, [0, 1] or [-1, 0] (its orthant), where the objective is smooth,
and L-BFGS-B takes ``0`` as a bound like any other; after each inner solve a coordinate that sits at ``0`` moves
to the side along which the one-sided derivatives say the Lagrangian falls (`DayPlan.evaluate`,
`DayPlan.sides`). An inner solve ends after `OracleConfig.inner_iterations` iterations, or sooner once
L-BFGS-B's projected gradient is below the stationarity tolerance times the smallest day's scale (below); then the
multipliers take the exact step ``lam <- relu(lam + rho g)`` (``lam_T`` clipped to [0, price]); each ``rho``
grows by `OracleConfig.rho_growth` where its constraints' worst violation is above its tolerance and did not
fall to a quarter, up to `OracleConfig.rho_max_factor` times its start. Days do not interact: every quantity
is batched over them (one L-BFGS-B problem holds all of them) and the KKT test is per day.

**KKT residual** (`DayPlan.kkt`), per day, at the plan ``u`` and the multipliers ``mu = relu(lam + rho g)`` that
the augmented Lagrangian's gradient carries (it is the ordinary Lagrangian's gradient at them):

- stationarity: the projected gradient of the Lagrangian, scaled as in Knitro's termination test
  (https://www.artelys.com/docs/knitro/2_userGuide/termination.html: for a constrained problem the optimality
  error is bounded by ``opttol * max(1, ||grad f(x_k)||_inf)``). With the scale ``tau = max(1, ||grad_u
  f||_inf)`` ($ per unit of ``u``; ``f`` the cost at the current plan without its terminal part, which the
  terminal constraint carries), ``stationarity_relative`` is the largest move of one projected-gradient step
  of ``L / tau``, ``|P(u - grad L / tau) - u|`` on each coordinate's piece (a battery's orthant, at its ``u =
  0`` both; `DayPlan.projected_step`), the move up with the derivative along ``+u`` and the move down with the
  one along ``-u``: zero exactly where no one-sided derivative falls inside the bounds, and continuous up to a
  bound (a coordinate ``s`` from the bound it is pushed against counts ``min(s, |grad L| / tau)``, the residual
  of stationarity and bound complementarity with the bound multiplier that minimises it). The two one-sided
  derivatives differ at a battery's ``u = 0`` and, for a generator's earlier coordinates, where its ramp window
  ties with its output limits (`FeasibleMap.ranges`); each comes from its own rollout. Elsewhere (a heat pump's
  comfort range at the clip to [0, 1], which no plan reaches but by chance) it is torch's derivative. It is
  scipy's L-BFGS-B projected gradient of ``L / tau``.
  ``stationarity`` is it times ``tau``. The cost gradient is the scale
  of the two terms that cancel in ``grad L = grad f + J^T mu`` at a KKT point; a residual relative to its value
  at the start, where the multipliers are 0, would compare gradients of different Lagrangians;
- primal feasibility: the largest voltage excursion outside the tightened band (pu; a failed power flow
  counts every node at 0 pu, `gridedge_env.metrics.scored_voltages`), the largest device violation of any
  agent-step (kW or K);
- complementary slackness: ``sum mu_v |g| + sum mu_d d + sum (mu_T relu(-x) + (price - mu_T) relu(x))``, in $
  relative to ``max(|day's cost|, 1 $)``.

The plan stops when every day meets every tolerance, or at the iteration cap.

`PerfectForesightPolicy` wraps it as a ``policy(sim, state)``: at the first step of an episode it plans the
whole day of every row, then replays the plan, so `gridedge_run.evaluate_policy` evaluates it on exactly the
same episodes and metrics as every other method (``gridedge evaluate --method oracle``). ``docs/baselines.md``
has the results. `optimise_actions` is the plain penalty method (Adam on the actions, fixed weights) that the
task's calibration uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import Bounds, minimize

from baselines.rules import RULES
from gridedge_env.core import feasible_action_bounds, heatpump_comfort_actions
from gridedge_env.metrics import RolloutMetrics, scored_voltages
from gridedge_env.simbench import fixed_penalty, rollout_objective

__all__ = ["DayPlan", "FeasibleMap", "OracleConfig", "PerfectForesightPolicy", "optimise_actions", "plan_days"]

#: ``policy(sim, state) -> actions [B, N]``
Policy = Callable[..., torch.Tensor]

#: `FeasibleMap` keeps every request inside the device's limits: exactly at a limit the simulator's projection
#: ties, and torch's minimum/maximum then split the gradient between the request and the limit. Other agents'
#: ranges shrink by this many action units, a battery's by this share: then a battery charged (or discharged)
#: to its limit keeps a range that is smooth in its state of charge, with slope 1 - INSIDE_ACTION, and the
#: derivative of every later step carries what an earlier step leaves room for. (Cut by a constant, as
#: ``relu(m - INSIDE_ACTION)``, a battery filled with ``u = 1`` sits at the relu's kink, where the derivative is
#: 0, and a plan that fills it early can never learn to fill it later; a range with a smooth floor, such as
#: ``m^2 / (m + INSIDE_ACTION)``, bends within INSIDE_ACTION of the limit, where L-BFGS-B's line search cannot
#: follow: scipy's SLSQP reaches -4.61 $/day with it on the small case of tests/test_oracle_scipy.py, against
#: -6.19 $/day with the share.) After two or more fills in a row the room left underflows to exactly 0;
#: an idle request then ties with its limit (see `DayPlan.evaluate`).
INSIDE_ACTION = 1e-9

#: A generator's ramp window ties with an output limit where its previous output lies within this share of its
#: ``p_max_kw`` of a ramp from that limit (`FeasibleMap.ranges`): rounding, not a distance.
TIE = 1e-12


@dataclass(frozen=True)
class OracleConfig:
    """Settings of the perfect-foresight planner (defaults: what docs/baselines.md measured on IEEE-123 with 1,000
    agents, 8 test days in one batch)."""

    iterations: int = 300
    """Iteration cap: L-BFGS-B iterations per batch of days (one forward and backward rollout each, more where
    its line search tries several points), unless every day meets the KKT tolerances first."""
    inner_iterations: int = 30
    """L-BFGS-B iterations between multiplier updates (fewer once the inner problem is stationary)."""
    memory: int = 20
    """L-BFGS-B memory (pairs of steps and gradient changes, scipy's ``maxcor``)."""
    init: str = "droop"
    """Rule whose actions along its own rollout, mapped onto the feasible ranges, are the starting point (a name
    in `baselines.rules.RULES`)."""
    margin_pu: float = 0.001
    """The voltage constraint uses [v_min + margin, v_max - margin], so the plan keeps strictly inside."""
    rho_voltage: float = 1e5
    """Initial penalty parameter of the voltage constraints, $ per pu^2 per node-step."""
    rho_device: float = 10.0
    """Initial penalty parameter of the device constraints, $ per (kW or K)^2 per agent-step."""
    rho_terminal: float = 1.0
    """Initial penalty parameter of the terminal condition, $ per kWh^2 per device."""
    rho_growth: float = 10.0
    """A penalty parameter is multiplied by this at a multiplier update where its constraints' worst violation
    is above its tolerance (`voltage_tol_pu`, `device_tol`; `device_tol` kWh for the terminal condition) and
    did not fall to a quarter of the previous one."""
    rho_max_factor: float = 1e4
    """Penalty parameters stop growing at this multiple of their initial values."""
    stationarity_rtol: float = 1e-2
    """KKT tolerance: largest move of a projected-gradient step of the day's Lagrangian divided by
    ``max(1, ||cost gradient||_inf)`` at the same plan, in units of ``u`` (module docstring; Knitro's scaling:
    an absolute tolerance in $ per unit of ``u`` would mean a different thing on every feeder, agent count and
    step length)."""
    complementarity_tol: float = 1e-5
    """KKT tolerance: complementary slackness of a day, relative to its |cost| (at least 1 $). (At 1e-4 every
    tolerance of the small case of docs/baselines.md holds while the plan still costs -2.39 $/day, against
    -6.21 $/day after the 300 iterations that 1e-5 runs to.)"""
    voltage_tol_pu: float = 1e-4
    """KKT tolerance: largest voltage excursion outside the margin-tightened band, pu."""
    device_tol: float = 1e-3
    """KKT tolerance: largest device violation of any agent-step (kW for batteries and generators, K for
    heat pumps)."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("iterations", "inner_iterations", "memory"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "rho_voltage",
            "rho_device",
            "rho_terminal",
            "stationarity_rtol",
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


class FeasibleMap:
    """The planner's variables ``u`` [B, N] in [-1, 1] of one step, mapped onto the actions each device can carry
    out at that step's state (module docstring): batteries ``u * high`` for ``u >= 0`` and ``-u * low`` below,
    so that ``u = 0`` is idle whatever the state of charge; every other agent affinely onto ``[low, high]``."""

    def __init__(self, sim):
        self.sim = sim
        self.battery = torch.zeros(sim.n_agents, dtype=torch.bool, device=sim.device)
        self.battery[sim.agent_slices["battery"]] = True

    def ranges(self, state, along: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(low, high)`` [B, N]: the actions without device violation at ``state``
        (`gridedge_env.core.feasible_action_bounds`), heat pumps cut to their comfort band, each
        shrunk by `INSIDE_ACTION` (a battery's range by that share, ``low <= 0 <= high``).

        A generator's window is its ramp window around the previous output clipped to its output limits, with a
        kink where the two tie; a step at the minimum followed by one at full ramp up (``u = 1``, then ``u =
        -1``) puts the next window exactly there (the margins cancel), and so does the mirror image from the
        maximum. There torch's derivative is the two pieces' mean, neither side's. With ``along`` (``+1`` or
        ``-1``) a tied bound takes the derivative of the piece that the previous output enters as the
        generator's earlier ``u`` move along ``along`` (each of them lowers it as it rises): the one-sided
        derivatives of `DayPlan.kkt`. The values do not change."""
        sim = self.sim
        low, high = feasible_action_bounds(sim, state)
        if along is not None:
            low, high = self._tied_generators(state, low, high, rising=along < 0)
        sl = sim.agent_slices["heatpump"]
        low, high = low.clone(), high.clone()
        low[:, sl], high[:, sl] = heatpump_comfort_actions(sim, state)
        margin = torch.clamp(0.5 * (high - low), max=INSIDE_ACTION)
        low = torch.where(self.battery, low * (1.0 - INSIDE_ACTION), low + margin)
        high = torch.where(self.battery, high * (1.0 - INSIDE_ACTION), high - margin)
        return low, high

    def _tied_generators(self, state, low, high, rising: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(low, high)`` with each generator bound that ties (`TIE`) carrying the derivative of its ramp piece
        (``prev -+ ramp``) where the previous output enters that piece (as it rises for the bound at the least
        output, as it falls for the one at the most), of its output limit (0) where it enters that one."""
        sl, p = self.sim.agent_slices["generator"], self.sim.params["generator"]
        prev, ramp = state.p_prev_kw, p.ramp_kw_per_h * self.sim.dt_h
        per_kw = -2.0 / (p.p_max_kw - p.p_min_kw)  # action units per kW of output (more output is a lower action)
        low, high = low.clone(), high.clone()
        # low is the action of the most output, min(p_max, prev + ramp); high of the least, max(p_min, prev - ramp)
        for bound, gap, enters_ramp in (
            (low, prev + ramp - p.p_max_kw, not rising),
            (high, prev - ramp - p.p_min_kw, rising),
        ):
            value = bound[:, sl]
            slope = per_kw * prev if enters_ramp else torch.zeros_like(prev)
            tied = value.detach() + slope - slope.detach()
            bound[:, sl] = torch.where(gap.abs() <= TIE * p.p_max_kw, tied, value)
        return low, high

    def actions(self, low: torch.Tensor, high: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Actions [B, N] of ``u`` on the ranges ``(low, high)``."""
        battery = torch.where(u >= 0, high * u, -low * u)
        affine = 0.5 * (low + high) + 0.5 * (high - low) * u
        return torch.where(self.battery, battery, affine)

    def variables(self, low: torch.Tensor, high: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The ``u`` [B, N] whose actions come closest to ``actions`` (the inverse of `actions` on the ranges)."""
        a = torch.minimum(torch.maximum(actions, low), high)
        tiny = torch.finfo(a.dtype).tiny
        battery = torch.where(a > 0, a / high.clamp(min=tiny), a / (-low).clamp(min=tiny))
        half = 0.5 * (high - low)
        affine = torch.where(half > 0, (a - 0.5 * (low + high)) / half.clamp(min=tiny), 0.0)
        return torch.where(self.battery, battery, affine).clamp(-1.0, 1.0)


def _psi(g: torch.Tensor, lam: torch.Tensor, rho: float) -> torch.Tensor:
    """Augmented-Lagrangian terms of the constraints ``g <= 0`` with multipliers ``lam``, elementwise."""
    return (torch.relu(lam + rho * g) ** 2 - lam**2) / (2.0 * rho)


def _priced(x: torch.Tensor, lam: torch.Tensor, rho: float, price: float) -> torch.Tensor:
    """``min over s >= 0`` of ``price * s + psi(x - s, lam, rho)``, elementwise: the augmented Lagrangian of
    ``price * relu(x)`` written as ``price * s`` with ``s >= x``; its slope in ``x`` is ``min(relu(lam + rho x),
    price)``."""
    knee = (price - lam) / rho  # lam + rho x = price
    linear = price * (x - knee) + (price**2 - lam**2) / (2.0 * rho)
    return torch.where(x <= knee, _psi(torch.minimum(x, knee), lam, rho), linear)


class DayPlan:
    """The augmented Lagrangian of one batch of days: its multipliers, evaluation and KKT residual."""

    def __init__(self, sim, state, config: OracleConfig):
        if not sim.config.net_metering:
            raise ValueError(
                "the planner needs net metering (the default): its kink handling assumes a battery's electricity "
                "cost is linear in its power"
            )
        self.sim, self.state, self.config = sim, state, config
        self.map = FeasibleMap(sim)
        self.v_lo = sim.config.v_min_pu + config.margin_pu
        self.v_hi = sim.config.v_max_pu - config.margin_pu
        self.price = sim.config.terminal_price_per_kwh
        zeros = lambda *shape: torch.zeros(shape, dtype=sim.dtype, device=sim.device)  # noqa: E731
        self.lam_voltage = zeros(sim.n_steps, state.batch_size, sim.n_nodes)
        self.lam_device = zeros(sim.n_steps, state.batch_size, sim.n_agents)
        self.lam_terminal = zeros(state.batch_size, sim.n_agents)
        self.rho = {"voltage": config.rho_voltage, "device": config.rho_device, "terminal": config.rho_terminal}
        self.worst = {"voltage": float("inf"), "device": float("inf"), "terminal": float("inf")}
        self.stationarity_scale = torch.ones(state.batch_size, dtype=sim.dtype, device=sim.device)  # set by `kkt`

    @torch.no_grad()
    def start(self, rule: Policy) -> torch.Tensor:
        """``u`` [T, B, N] of ``rule``'s actions along the rollout of their mapped actions."""
        s, us = self.state, []
        for _ in range(self.sim.n_steps):
            low, high = self.map.ranges(s)
            u = self.map.variables(low, high, rule(self.sim, s))
            s = self.sim.step(s, self.map.actions(low, high, u)).state
            us.append(u)
        return torch.stack(us)

    def voltage_constraint(self, r) -> torch.Tensor:
        """``g`` [B, n], signed distance outside the tightened band, pu (<= 0 inside; failed flows at 0 pu)."""
        v = scored_voltages(r.v_mag_pu, r.converged)
        return torch.maximum(v - self.v_hi, self.v_lo - v)

    def evaluate(self, u: torch.Tensor, constraints: bool = True, along: float | None = None) -> dict:
        """The augmented Lagrangian at ``u`` [T, B, N], its one-sided derivatives and the constraints; with
        ``constraints=False`` the cost alone (without its terminal part, which the terminal constraint carries);
        with ``along`` (``+1`` or ``-1``) a generator's window that ties with its output limits has the derivative
        of that side (`FeasibleMap.ranges`), so ``g_plus`` (``along=1``) or ``g_minus`` (``along=-1``) is exact
        there too.

        The dict holds ``objective`` (float), ``g_plus``/``g_minus`` [T, B, N]
        (derivatives along ``+u`` and ``-u``: equal except at a battery's ``u = 0``), ``actions`` [T, B, N],
        ``results`` (StepResults), ``g`` [T, B, n], ``d`` [T, B, N], ``x`` [B, N] (terminal deficit, kWh) and
        ``cost`` [B] ($ per day).
        """
        sim = self.sim
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            s, total = self.state, u.new_zeros(())
            acts, socs, lows, highs, results, gs = [], [], [], [], [], []
            for k in range(sim.n_steps):
                low, high = self.map.ranges(s, along)
                a = self.map.actions(low, high, u[k])
                r = sim.step(s, a)
                g = self.voltage_constraint(r)
                total = total + (r.cost - r.terminal_cost).sum()
                if constraints:
                    total = total + _psi(g, self.lam_voltage[k], self.rho["voltage"]).sum()
                    total = total + _psi(r.device_violation, self.lam_device[k], self.rho["device"]).sum()
                acts.append(a)
                socs.append(r.state.soc_kwh)
                lows.append(low.detach())
                highs.append(high.detach())
                results.append(r)
                gs.append(g.detach())
                last, s = s, r.state
            _, x = sim.terminal_deficit(last, s.soc_kwh, s.t_indoor_c)
            if constraints:
                total = total + _priced(x, self.lam_terminal, self.rho["terminal"], self.price).sum()
            grads = torch.autograd.grad(total, [u, *acts, *socs], allow_unused=True)
        grad_u = grads[0]
        grad_a = torch.stack(grads[1 : 1 + sim.n_steps])
        costate = torch.stack(
            [torch.zeros_like(sc) if gr is None else gr for gr, sc in zip(grads[1 + sim.n_steps :], socs, strict=True)]
        )
        g_plus, g_minus = self._one_sided(u.detach(), grad_u, grad_a, costate, torch.stack(lows), torch.stack(highs))
        return {
            "objective": float(total.detach()),
            "g_plus": g_plus,
            "g_minus": g_minus,
            "actions": torch.stack([a.detach() for a in acts]),
            "results": results,
            "g": torch.stack(gs),
            "d": torch.stack([r.device_violation.detach() for r in results]),
            "x": x.detach(),
            "cost": sum(r.cost.detach().sum(dim=1) for r in results),
        }

    def _one_sided(self, u, grad_u, grad_a, costate, low, high) -> tuple[torch.Tensor, torch.Tensor]:
        """Derivatives of the objective along ``+u`` and ``-u``. Where a battery idles (``u = 0``, action 0) the
        simulator's kinks (``|p|``, ``relu(+-p)``) get derivative 0 from torch; add what each side has: the
        degradation cost ``+-deg dt`` and the state of charge's change (``eta_c dt`` or ``dt / eta_d`` per kW)
        times its costate ``dL/dsoc``, per kW of power (``p_max`` per unit action), times ``da/du`` of that side."""
        sl = self.sim.agent_slices["battery"]
        p, dt = self.sim.params["battery"], self.sim.dt_h
        base = grad_a[..., sl]
        right = (base + p.p_max_kw * dt * (p.degradation_cost_per_kwh + costate * p.eta_charge)) * high[..., sl]
        left = (base + p.p_max_kw * dt * (-p.degradation_cost_per_kwh + costate / p.eta_discharge)) * (-low[..., sl])
        idle = u[..., sl] == 0
        g_plus, g_minus = grad_u.clone(), grad_u.clone()
        g_plus[..., sl] = torch.where(idle, right, grad_u[..., sl])
        g_minus[..., sl] = torch.where(idle, left, grad_u[..., sl])
        return g_plus, g_minus

    def projected_step(self, u: torch.Tensor, g_plus: torch.Tensor, g_minus: torch.Tensor) -> torch.Tensor:
        """Per coordinate, how far a unit projected-gradient step moves ``u`` [T, B, N]: ``|P(u - g) - u|`` on the
        coordinate's piece (a battery's orthant, [0, 1] or [-1, 0], every other agent's [-1, 1]) with the
        one-sided derivative along the way it moves, ``min(hi - u, relu(-g_plus))`` up and ``min(u - lo,
        relu(g_minus))`` down, the larger of the two; at a battery's ``u = 0`` both pieces, on [-1, 1]. Zero
        exactly where no one-sided derivative falls inside the bounds (directional stationarity), and continuous
        up to a bound: a coordinate ``s`` from the bound it is pushed against counts ``min(s, |g|)``, which is
        the residual of stationarity and bound complementarity with the bound multiplier that minimises it."""
        battery = self.map.battery
        lo = torch.where(battery & (u > 0), 0.0, -1.0)
        hi = torch.where(battery & (u < 0), 0.0, 1.0)
        up = torch.minimum(hi - u, torch.relu(-g_plus))
        down = torch.minimum(u - lo, torch.relu(g_minus))
        return torch.maximum(up, down)

    @staticmethod
    def falling_side(g_plus, g_minus, up, down) -> tuple[torch.Tensor, torch.Tensor]:
        """``(take_up, take_down)``: the side along which the objective falls where ``up`` (along ``+u``) or
        ``down`` (along ``-u``) does, the steeper one where both do; neither elsewhere."""
        take_up = up & (~down | (-g_plus >= g_minus))
        return take_up, down & ~take_up

    def sides(self, u: torch.Tensor, ev: dict, side: torch.Tensor | None = None) -> torch.Tensor:
        """``side`` [T, B, N]: ``-1`` where a battery's ``u`` is held to [-1, 0], ``+1`` elsewhere (a battery
        held to [0, 1], every other agent on [-1, 1]): the sign of ``u``, and at a battery's ``u = 0`` the side
        along which the Lagrangian falls (the steeper one where both do; the previous ``side`` where neither
        does, so that a coordinate stationary at 0 stays put)."""
        g_plus, g_minus = ev["g_plus"], ev["g_minus"]
        take_up, take_down = self.falling_side(g_plus, g_minus, g_plus < 0, g_minus > 0)
        keep = torch.ones_like(u) if side is None else side
        at_zero = torch.where(take_down, -1.0, torch.where(take_up, 1.0, keep))
        new = torch.where(u > 0, 1.0, torch.where(u < 0, -1.0, at_zero))
        return torch.where(self.map.battery, new, torch.ones_like(new))

    def minimise(
        self, u: torch.Tensor, side: torch.Tensor, iterations: int, gtol: float, callback: Callable[[], None]
    ) -> torch.Tensor:
        """The inner solve: scipy's L-BFGS-B on the augmented Lagrangian from ``u`` [T, B, N], every battery
        coordinate held to its ``side`` of 0 (`sides`), where the derivative is that side's. Stops after
        ``iterations`` iterations, or once scipy's projected gradient (on the box, the `projected_step`) is
        below ``gtol`` ($ per unit of ``u``); ``callback()`` after every iteration."""
        battery = self.map.battery.expand_as(u)
        lower = torch.where(battery & (side > 0), 0.0, -1.0).flatten().cpu().numpy()
        upper = torch.where(battery & (side < 0), 0.0, 1.0).flatten().cpu().numpy()

        def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
            ev = self.evaluate(torch.from_numpy(x).view(u.shape).to(u))
            grad = torch.where(side < 0, ev["g_minus"], ev["g_plus"])
            return ev["objective"], grad.flatten().cpu().numpy().astype(np.float64)

        result = minimize(
            objective,
            u.detach().cpu().flatten().numpy(),
            jac=True,
            method="L-BFGS-B",
            bounds=Bounds(lower, upper),
            callback=lambda _: callback(),
            # no stop on a small decrease: the window and the stationarity tolerance end the inner solve
            options={"maxiter": iterations, "maxcor": self.config.memory, "gtol": gtol, "ftol": 0.0},
        )
        return torch.from_numpy(result.x).view(u.shape).to(u)

    def multipliers(self, ev: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The Lagrange multipliers that the augmented Lagrangian's gradient at ``ev`` carries."""
        mu_v = torch.relu(self.lam_voltage + self.rho["voltage"] * ev["g"])
        mu_d = torch.relu(self.lam_device + self.rho["device"] * ev["d"])
        mu_t = (self.lam_terminal + self.rho["terminal"] * ev["x"]).clamp(0.0, self.price)
        return mu_v, mu_d, mu_t

    def kkt(self, u: torch.Tensor, ev: dict) -> list[dict]:
        """KKT residual of every day (module docstring) at ``u`` with its evaluation ``ev``; also keeps the days'
        stationarity scales (``stationarity_scale`` [B]) for the inner solve's tolerance. The stationarity takes
        each one-sided derivative from its own rollout (``evaluate(u, along=+-1)``), two more than the inner
        solve's one per iteration."""
        cfg = self.config
        cost = self.evaluate(u, constraints=False)
        scale = torch.maximum(cost["g_plus"].abs(), cost["g_minus"].abs()).amax(dim=(0, 2)).clamp(min=1.0)
        self.stationarity_scale = scale
        # each side its own rollout: a generator's window that ties with its output limits is a kink in its earlier u
        g_plus, g_minus = self.evaluate(u, along=1.0)["g_plus"], self.evaluate(u, along=-1.0)["g_minus"]
        relative = self.projected_step(u, g_plus / scale[:, None], g_minus / scale[:, None])
        relative = relative.amax(dim=(0, 2))
        mu_v, mu_d, mu_t = self.multipliers(ev)
        g, d, x = ev["g"], ev["d"], ev["x"]
        slack = (
            (mu_v * g.abs()).sum(dim=(0, 2))
            + (mu_d * d).sum(dim=(0, 2))
            + (mu_t * torch.relu(-x) + (self.price - mu_t) * torch.relu(x)).sum(dim=1)
        )
        failures = torch.stack([~r.converged for r in ev["results"]]).sum(dim=0)
        out = []
        for b in range(u.shape[1]):
            row = {
                "day": int(self.state.day_idx[b]),
                "stationarity": float(relative[b] * scale[b]),
                "stationarity_scale": float(scale[b]),
                "stationarity_relative": float(relative[b]),
                "complementarity": float(slack[b]) / max(abs(float(ev["cost"][b])), 1.0),
                "voltage_infeasibility_pu": float(torch.relu(g[:, b]).max()),
                "device_infeasibility": float(d[:, b].max()),
                "pf_failures": int(failures[b]),
            }
            row["met"] = (
                row["stationarity_relative"] <= cfg.stationarity_rtol
                and row["complementarity"] <= cfg.complementarity_tol
                and row["voltage_infeasibility_pu"] <= cfg.voltage_tol_pu
                and row["device_infeasibility"] <= cfg.device_tol
                and row["pf_failures"] == 0
            )
            out.append(row)
        return out

    def update_multipliers(self, ev: dict) -> None:
        """The exact step ``lam <- relu(lam + rho g)`` (terminal: clipped to [0, price]); a ``rho`` grows where
        its constraints' worst violation is above its tolerance and did not fall to a quarter of the previous
        update's."""
        cfg = self.config
        mu_v, mu_d, mu_t = self.multipliers(ev)
        knee = (self.price - self.lam_terminal) / self.rho["terminal"]
        worst = {
            "voltage": float(torch.relu(ev["g"]).max()),
            "device": float(ev["d"].max()),
            # the terminal's violation of s >= x at the minimising s = max(0, x - knee)
            "terminal": float(torch.relu(torch.minimum(ev["x"], knee)).max()),
        }
        self.lam_voltage, self.lam_device, self.lam_terminal = mu_v, mu_d, mu_t
        start = {"voltage": cfg.rho_voltage, "device": cfg.rho_device, "terminal": cfg.rho_terminal}
        tolerance = {"voltage": cfg.voltage_tol_pu, "device": cfg.device_tol, "terminal": cfg.device_tol}
        for name, value in worst.items():
            if value > tolerance[name] and value > 0.25 * self.worst[name]:
                self.rho[name] = min(self.rho[name] * cfg.rho_growth, start[name] * cfg.rho_max_factor)
            self.worst[name] = value


def plan_days(
    sim, state, config: OracleConfig = OracleConfig(), progress: Callable[[int, int], None] | None = None
) -> tuple[torch.Tensor, dict]:
    """Plan every action of the episodes in ``state`` (``t = 0``) by the augmented Lagrangian (module docstring).

    Args:
        sim: The simulator.
        state: Initial state of B days (all of them are planned together; days do not interact).
        config: `OracleConfig`.
        progress: Optional ``callback(done_iterations, total_iterations)``.

    Returns:
        ``(actions [T, B, N], metrics)``: the plan, and the standard metrics of its rollout plus ``kkt`` (one
        dict per day: ``day``, ``stationarity``, ``stationarity_relative``, ``complementarity``,
        ``voltage_infeasibility_pu``, ``device_infeasibility``, ``pf_failures``, ``met``), ``met`` (every day),
        ``iterations``, ``multiplier_updates``, ``objective_first``/``objective_last`` (augmented Lagrangian, $)
        and ``seconds``.
    """
    if state.t != 0:
        raise ValueError(f"the oracle plans whole days from their first step, got a state at step {state.t}")
    t0 = time.perf_counter()
    cfg = config
    plan = DayPlan(sim, state, cfg)
    u = plan.start(RULES[cfg.init])
    ev = plan.evaluate(u)
    first = ev["objective"]
    side = plan.sides(u, ev)
    iterations = updates = 0

    def step() -> None:
        nonlocal iterations
        iterations += 1
        if progress is not None:
            progress(iterations, cfg.iterations)

    while True:
        kkt = plan.kkt(u, ev)
        if all(day["met"] for day in kkt) or iterations >= cfg.iterations:
            break
        if iterations:  # after an inner solve: the multipliers of its point
            plan.update_multipliers(ev)
            updates += 1
        # the inner solve's tolerance in $ per unit: the stationarity tolerance of the day with the smallest scale
        gtol = cfg.stationarity_rtol * float(plan.stationarity_scale.min())
        done = iterations
        u = plan.minimise(u, side, min(cfg.inner_iterations, cfg.iterations - iterations), gtol, step)
        # an inner solve that could not move counts as one iteration, so that the cap always ends the loop
        iterations = max(iterations, done + 1)
        ev = plan.evaluate(u)
        side = plan.sides(u, ev, side)
    summary = RolloutMetrics(sim)
    for r in ev["results"]:
        summary.add(r)
    metrics = summary.summary(state.batch_size)
    metrics.update(
        kkt=kkt,
        met=all(day["met"] for day in kkt),
        iterations=iterations,
        multiplier_updates=updates,
        objective_first=first,
        objective_last=ev["objective"],
        seconds=time.perf_counter() - t0,
    )
    return ev["actions"], metrics


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
) -> tuple[torch.Tensor, dict]:
    """The plain penalty method: every action of the episodes in ``state`` by projected Adam on
    ``sum(cost) + w_device * sum(device_violation) + w_voltage * sum(voltage_violation)``.

    The learning rate decays from ``lr`` to ``lr / 10`` on a cosine schedule; the actions are projected onto
    [-1, 1] after every update; a failed power flow scores every node at 0 pu
    (`gridedge_env.metrics.scored_voltages`). Starts from the actions ``init`` would take along its own rollout
    (default: all zeros). No convergence test: `plan_days` is the optimum.

    Args:
        sim: The simulator.
        state: Initial state (``t = 0``) of the episodes to optimise.
        iterations: Adam steps (one forward + backward rollout each).
        lr: Adam learning rate (actions are in [-1, 1]).
        w_voltage: Penalty per pu-step of voltage violation, $.
        w_device: Penalty per unit of device violation (kW or K) per step, $.
        init: Optional policy whose rollout actions are the starting point.
        progress: Optional ``callback(done, total)``.

    Returns:
        ``(actions [T, B, N], metrics)``: the standard metrics (`gridedge_env.metrics`) of the final actions
        plus ``objective_first``, ``objective_last`` and ``seconds``.
    """
    t0 = time.perf_counter()
    penalty = fixed_penalty(sim, w_voltage=w_voltage, w_device=w_device)

    if init is None:
        start = torch.zeros((sim.n_steps, state.batch_size, sim.n_agents), dtype=sim.dtype, device=sim.device)
    else:
        acts, s = [], state
        with torch.no_grad():
            for _ in range(sim.n_steps):
                acts.append(init(sim, s))
                s = sim.step(s, acts[-1]).state
        start = torch.stack(acts)
    actions = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([actions], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iterations, eta_min=0.1 * lr)
    history = []
    for it in range(iterations):
        opt.zero_grad()
        objective, _ = rollout_objective(sim, state, actions, penalty)
        objective.backward()
        history.append(float(objective.detach()))
        opt.step()
        sched.step()
        with torch.no_grad():
            actions.clamp_(-1.0, 1.0)
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


class PerfectForesightPolicy:
    """``policy(sim, state) -> actions [B, N]`` that plans each episode's whole day at its first step
    (`plan_days`) and replays the plan; the simulator is deterministic, so the replay is the planned rollout.

    Args:
        config: `OracleConfig`.
        progress: Optional ``callback(done_iterations, total_iterations)`` of each plan.

    Attributes:
        plans: One record per plan made so far (one per batch of days): its ``days``, ``seconds``,
            ``iterations``, ``multiplier_updates``, ``met`` and ``kkt`` (`plan_days`' per-day residuals).
    """

    def __init__(self, config: OracleConfig = OracleConfig(), progress: Callable[[int, int], None] | None = None):
        self.config = config
        self.progress = progress
        self.plans: list[dict] = []
        self._actions: torch.Tensor | None = None
        self._state0 = None

    def __call__(self, sim, state) -> torch.Tensor:
        if state.t == 0:
            self._actions, metrics = plan_days(sim, state, self.config, self.progress)
            self._state0 = state
            self.plans.append(
                {
                    "days": [int(d) for d in state.day_idx],
                    **{k: metrics[k] for k in ("seconds", "iterations", "multiplier_updates", "met", "kkt")},
                }
            )
        elif self._actions is None or not torch.equal(state.day_idx, self._state0.day_idx):
            raise ValueError("the perfect-foresight policy must see each episode from its first step (t = 0)")
        return self._actions[state.t]
