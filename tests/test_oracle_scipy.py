"""The perfect-foresight planner (`baselines.oracle.plan_days`) against general nonlinear solvers: scipy's
``trust-constr`` and ``SLSQP`` on the same problem.

Same variables and bounds (the planner's ``u`` in [-1, 1] on each device's feasible range, `FeasibleMap`, plus
one terminal slack ``s >= 0`` per agent), same objective (the simulator's cost without its terminal part, plus
``price * s``), and the constraints written out exactly: every node voltage of every step inside the
margin-tightened band, every device violation at most the planner's tolerance (it is >= 0 by definition,
and the interior-point method needs a strictly feasible slack), and ``x - s <= 0`` for the signed terminal deficit ``x``
(`Sim.terminal_deficit`, electrical kWh). Minimising over ``s`` gives back ``price * relu(x)``, the terminal
cost the planner and the metrics use.

Gradients come from torch autograd. The constraint Jacobian (one row per constraint, about a thousand) is one
backward pass of a batch that holds one copy of the day per constraint: copy ``r`` back-propagates its own
constraint ``r`` only, so the gradient with respect to copy ``r``'s variables is row ``r``.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch
from scipy.optimize import Bounds, NonlinearConstraint, minimize

from baselines.oracle import DayPlan, OracleConfig, plan_days
from baselines.rules import RULES
from gridedge_env import make_sim
from gridedge_env.episodes import reset_days
from gridedge_env.metrics import scored_voltages

#: The small case of docs/baselines.md: IEEE-13 with 5 agents (2 batteries, 2 heat pumps, 1 generator), hourly
#: steps, light feeder load and an upper voltage limit of 1.0343 pu, so that the voltage constraint binds.
CASE = dict(
    feeder="ieee13", n_agents=5, step_minutes=60, load_scale=0.5, pv_kwp_per_kw=1.0, source_v_pu=1.0, v_max_pu=1.0343
)
DAY = 102
#: The voltage constraints go to scipy in mpu (1e-3 pu): their gradients are then of the cost's order ($ per
#: unit of ``u``), which the interior-point method's barrier and trust region need.
V_SCALE = 1e3
#: trust-constr's barrier settings: its default initial barrier parameter (0.1 $ per log-unit of slack over
#: about a thousand constraints) outweighs this day's cost of a few $
TRUST_CONSTR_OPTIONS = {"initial_barrier_parameter": 1e-4, "initial_barrier_tolerance": 1e-4}
#: distance of the starting point from its bounds
INTERIOR = 1e-2


def repeat_state(state, copies: int):
    """``state`` (one row) repeated ``copies`` times along the batch."""
    tensors = {
        f.name: torch.cat([getattr(state, f.name)] * copies)
        for f in dataclasses.fields(state)
        if isinstance(getattr(state, f.name), torch.Tensor)
    }
    return dataclasses.replace(state, **tensors)


class ScipyProblem:
    """The planner's problem of one day as scipy callables on ``z = [u (T * N), s (N)]``."""

    def __init__(self, sim, state, config: OracleConfig):
        self.sim, self.state = sim, state
        self.plan = DayPlan(sim, state, config)
        self.shape = (sim.n_steps, 1, sim.n_agents)
        self.n_u = sim.n_steps * sim.n_agents
        self.n_constraints = sim.n_steps * sim.n_nodes + sim.n_steps * sim.n_agents + sim.n_agents
        self.copies = repeat_state(state, self.n_constraints)
        # The device violation is >= 0 by definition: as ``d <= 0`` it would leave the interior-point method no
        # strictly feasible slack. ``d <= device_tol`` (the planner's KKT tolerance) has one.
        self.device_tol = config.device_tol

    def rollout(self, state, u: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(objective [B], constraints [B, m])`` of the rows of ``state`` at ``u`` [T, B, N] and ``s`` [B, N]:
        constraints ``g(z) <= 0`` in the order voltage excess (both sides, mpu; step-major), device violation minus
        its tolerance,
        ``x - s``."""
        sim, plan = self.sim, self.plan
        s_state, objective, volts, devices = state, u.new_zeros(u.shape[1]), [], []
        for k in range(sim.n_steps):
            low, high = plan.map.ranges(s_state)
            r = sim.step(s_state, plan.map.actions(low, high, u[k]))
            objective = objective + (r.cost - r.terminal_cost).sum(dim=1)
            volts.append(scored_voltages(r.v_mag_pu, r.converged))
            devices.append(r.device_violation)
            last, s_state = s_state, r.state
        _, x = sim.terminal_deficit(last, s_state.soc_kwh, s_state.t_indoor_c)
        objective = objective + plan.price * s.sum(dim=1)
        v = torch.stack(volts, dim=1).flatten(1)  # [B, T * n]
        band = V_SCALE * torch.maximum(v - plan.v_hi, plan.v_lo - v)
        device = torch.stack(devices, dim=1).flatten(1) - self.device_tol
        constraints = torch.cat([band, device, x - s], dim=1)
        return objective, constraints

    def split(self, z: np.ndarray, copies: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z [copies, n], u [T, copies, N], s [copies, N])``: ``copies`` copies of ``z`` that require grad."""
        zt = torch.as_tensor(z, dtype=self.sim.dtype).reshape(1, -1).expand(copies, -1).clone().requires_grad_(True)
        u = zt[:, : self.n_u].reshape(copies, self.sim.n_steps, self.sim.n_agents).transpose(0, 1)
        return zt, u, zt[:, self.n_u :]

    def objective(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        zt, u, s = self.split(z, 1)
        f, _ = self.rollout(self.state, u, s)
        (grad,) = torch.autograd.grad(f.sum(), zt)
        return float(f.detach()), grad[0].numpy()

    def constraints(self, z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            _, u, s = self.split(z, 1)
            return self.rollout(self.state, u, s)[1][0].numpy()

    def jacobian(self, z: np.ndarray) -> np.ndarray:
        zt, u, s = self.split(z, self.n_constraints)
        _, c = self.rollout(self.copies, u, s)
        (grad,) = torch.autograd.grad(c.diagonal().sum(), zt)
        return grad.numpy()

    def start(self, rule: str) -> np.ndarray:
        """``z`` of the planner's starting point (``rule``'s actions mapped) with the least feasible slack, moved
        `INTERIOR` inside the bounds (the interior-point method needs a strictly feasible start) and off 0."""
        u = self.plan.start(RULES[rule])
        _, c = self.rollout(self.state, u, torch.zeros((1, self.sim.n_agents), dtype=self.sim.dtype))
        s = torch.relu(c[0, -self.sim.n_agents :])
        u = u.clamp(-1.0 + INTERIOR, 1.0 - INTERIOR)
        # off an idle battery's kink at u = 0, where torch's derivative is neither side's
        u = torch.where(u == 0, INTERIOR, u)
        return np.concatenate([u[:, 0].flatten().numpy(), s.numpy() + INTERIOR])


def solve_with_scipy(sim, state, config: OracleConfig, method: str, maxiter: int) -> dict:
    """scipy's ``method`` (``"trust-constr"`` or ``"SLSQP"``) from the planner's starting point; the simulator's
    cost and the feasibility of its plan."""
    problem = ScipyProblem(sim, state, config)
    z0 = problem.start(config.init)
    lower = np.r_[-np.ones(problem.n_u), np.zeros(sim.n_agents)]
    upper = np.r_[np.ones(problem.n_u), np.full(sim.n_agents, np.inf)]
    t0 = time.perf_counter()
    if method == "trust-constr":
        constraints = [NonlinearConstraint(problem.constraints, -np.inf, 0.0, jac=problem.jacobian)]
        options = {"maxiter": maxiter, "gtol": 1e-8, "xtol": 1e-10, **TRUST_CONSTR_OPTIONS}
        bounds = Bounds(lower, upper, keep_feasible=True)
    else:  # SLSQP writes inequalities as fun(z) >= 0
        constraints = [
            {"type": "ineq", "fun": lambda z: -problem.constraints(z), "jac": lambda z: -problem.jacobian(z)}
        ]
        options = {"maxiter": maxiter, "ftol": 1e-9}
        bounds = Bounds(lower, upper)
    result = minimize(
        problem.objective, z0, jac=True, method=method, bounds=bounds, constraints=constraints, options=options
    )
    u = torch.as_tensor(result.x[: problem.n_u], dtype=sim.dtype).clamp(-1.0, 1.0)
    c = problem.constraints(result.x)
    n_voltage = sim.n_steps * sim.n_nodes
    return {
        "cost": simulator_cost(sim, state, problem.plan, u.reshape(sim.n_steps, 1, sim.n_agents)),
        "voltage_infeasibility_pu": max(float(c[:n_voltage].max()) / V_SCALE, 0.0),
        "device_infeasibility": max(float(c[n_voltage : -sim.n_agents].max()) + problem.device_tol, 0.0),
        "message": result.message,
        "iterations": result.nit,
        "seconds": time.perf_counter() - t0,
    }


@torch.no_grad()
def simulator_cost(sim, state, plan: DayPlan, u: torch.Tensor) -> float:
    """The simulator's cost of the day ($, terminal condition included) under the actions that ``u`` maps to."""
    s, total = state, 0.0
    for k in range(sim.n_steps):
        low, high = plan.map.ranges(s)
        r = sim.step(s, plan.map.actions(low, high, u[k]))
        total += float(r.cost.sum())
        s = r.state
    return total


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.xfail(
    strict=True,
    reason="trust-constr does not reach feasibility on this piecewise-smooth problem: from the droop start it "
    "stopped after 176 iterations (about 380 s) with the start's voltage excess of 1.29e-4 pu (measured with the "
    "earlier range cut relu(m - 1e-9), not yet with the share; docs/baselines.md)",
)
def test_trust_constr_reaches_a_feasible_plan():
    """scipy's ``trust-constr`` keeps every constraint (to the planner's tolerances) at its end."""
    torch.set_num_threads(1)
    sim = make_sim(**CASE)
    config = OracleConfig()
    ref = solve_with_scipy(sim, reset_days(sim, "test", [DAY]), config, "trust-constr", maxiter=400)
    assert ref["voltage_infeasibility_pu"] <= config.voltage_tol_pu and ref["device_infeasibility"] <= config.device_tol


#: Planner settings of the comparison: the default tolerances (at complementarity_tol 1e-4 every tolerance
#: already holds at a plan of -2.39 $/day, where the planner would stop), more iterations and room for long inner
#: solves.
PLANNER = OracleConfig(iterations=1500, inner_iterations=150)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_planner_matches_slsqp_within_one_percent():
    """scipy's ``SLSQP`` from the same start reaches a feasible plan (-6.226 $/day in 115 iterations, about 90 s
    on one core); the planner meets every KKT tolerance of `PLANNER` before its iteration cap and its plan is
    feasible and costs at most 1 % more (-6.219 $/day after 705 iterations and 58 multiplier updates, about
    200 s)."""
    torch.set_num_threads(1)
    sim = make_sim(**CASE)
    state = reset_days(sim, "test", [DAY])
    ref = solve_with_scipy(sim, state, PLANNER, "SLSQP", maxiter=300)
    assert ref["voltage_infeasibility_pu"] <= PLANNER.voltage_tol_pu
    assert ref["device_infeasibility"] <= PLANNER.device_tol
    assert "successfully" in ref["message"], ref["message"]
    _, metrics = plan_days(sim, state, PLANNER)
    (day,) = metrics["kkt"]
    assert metrics["met"] and metrics["iterations"] < PLANNER.iterations, day
    assert day["stationarity_relative"] <= PLANNER.stationarity_rtol
    assert day["complementarity"] <= PLANNER.complementarity_tol
    assert day["voltage_infeasibility_pu"] <= PLANNER.voltage_tol_pu and day["device_infeasibility"] == 0.0
    assert metrics["cost"] <= ref["cost"] + 0.01 * abs(ref["cost"]), (metrics["cost"], ref["cost"])
