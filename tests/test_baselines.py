"""Baselines (`baselines.rules`, `baselines.oracle`, `baselines.ssl`): smoke runs through the CLI, the
optimum against the rules, droop against price-seeking on the default task, bad inputs.

IPPO / MAPPO are smoke-tested in tests/test_ppo.py and price-seeking through ``gridedge evaluate --method``
in tests/test_gradmap.py; `tests/test_compare.py` runs every method only inside ``gridedge compare``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math

import pytest
import torch

from baselines.oracle import DayPlan, FeasibleMap, OracleConfig, PerfectForesightPolicy, plan_days
from baselines.rules import RULES, DroopCurves
from baselines.ssl import SSLConfig, ssl_config, ssl_penalty_config
from gridedge_env import make_sim
from gridedge_env.episodes import reset_days
from gridedge_env.metrics import DEVICE_METRIC_NAMES
from gridedge_run import EVAL_KEYS, REFERENCE_POLICIES, evaluate_policy
from gridedge_run.cli import main
from gridedge_run.commands import evaluate_reference

#: the evaluation keys every method must report, finite
METRIC_KEYS = (
    "cost",
    "violation_share",
    "violation_sum_pu",
    "worst_violation_pu",
    *DEVICE_METRIC_NAMES,
    "pf_failures",
    "n_agents",
    "days",
)
RULE_NAMES = ("noop", "price-seeking", "droop")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op torch thread in these tests (restored afterwards); the numbers are the same. The tensors are
    small, and on a busy 2-core machine two threads were several times slower: 200 s instead of 27 s for the
    optimum test, 13 s instead of 2.5 s per rule over the default task's test days."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(argv: list[str]) -> tuple[int, dict | None, str]:
    """``gridedge ARGV`` in process: (exit code, the --json output or None, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    text = out.getvalue()
    return code, (json.loads(text) if code == 0 and text.strip() else None), err.getvalue()


def check_metrics(result: dict, n_agents: int, days: int) -> None:
    assert set(EVAL_KEYS) <= set(result), sorted(set(EVAL_KEYS) - set(result))
    for key in METRIC_KEYS:
        assert key in result, key
        assert math.isfinite(result[key]), (key, result[key])
    assert result["n_agents"] == n_agents and result["days"] == days
    assert 0.0 <= result["violation_share"] <= 1.0 and result["pf_failures"] == 0


# ----------------------------------------------------------------------------------------------------------
# 1. smoke runs on IEEE-13 with few agents, through the CLI
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ssl", "ssl-penalty"])
def test_cli_trains_and_evaluates_ssl(tmp_path, method):
    out = tmp_path / method
    code, summary, err = run_cli(
        [
            "train",
            method,
            "--feeder",
            "ieee13",
            "--agents",
            "12",
            "--iterations",
            "2",
            "--seed",
            "1",
            "--out",
            str(out),
            "--set",
            "batch_days=2",
            "--set",
            "hidden=8",
            "--json",
        ]
    )
    assert code == 0, err
    assert summary["method"] == method and summary["iterations"] == 2 and summary["n_agents"] == 12
    for key in ("final_cost", "final_violation_share", "final_worst_violation_pu", "final_heatpump_comfort_k_steps"):
        assert math.isfinite(summary[key]), key
    info = json.loads((out / "config.json").read_text())
    assert info["method"] == method and info["config"]["fixed_penalties"] is (method == "ssl-penalty")
    assert "reuse" not in info["config"] and info["config"]["bptt_window"] == 4  # one update, no trust region
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    voltage_mu = [float(r["voltage_multiplier_max"]) for r in rows]
    if method == "ssl-penalty":  # fixed weights: the multipliers stay at the penalties, no dual ascent
        assert voltage_mu == [SSLConfig.voltage_penalty] * 2
        for name in ("battery", "heatpump", "generator"):
            assert [float(r[f"{name}_multiplier_max"]) for r in rows] == [SSLConfig.device_penalty] * 2
    else:  # primal-dual: IEEE-13 violates its band, so dual ascent raises the voltage multipliers from 0
        assert 0.0 < voltage_mu[0] < voltage_mu[1]

    code, result, err = run_cli(["evaluate", str(out), "--split", "test", "--days", "2", "--json"])
    assert code == 0, err
    assert result["method"] == method and result["iteration"] == 2
    check_metrics(result, n_agents=12, days=2)


@pytest.mark.parametrize("method", ["noop", "droop"])
def test_cli_evaluates_rules(method):
    code, result, err = run_cli(
        ["evaluate", "--method", method, "--feeder", "ieee13", "--agents", "20", "--days", "3", "--json"]
    )
    assert code == 0, err
    assert result["method"] == method
    check_metrics(result, n_agents=20, days=3)
    # the CLI reports exactly what the rule gives through evaluate_policy on the same days
    direct = evaluate_policy(make_sim(feeder="ieee13", n_agents=20), RULES[method], split="test", days=3)
    assert result["cost"] == pytest.approx(direct["cost"], rel=1e-12)
    assert result["violation_share"] == direct["violation_share"]


def test_cli_evaluates_other_households_on_the_same_days():
    args = ["evaluate", "--method", "noop", "--feeder", "ieee13", "--agents", "20", "--days", "3", "--json"]
    code, result, err = run_cli([*args, "--households", "validation"])
    assert code == 0, err
    assert result["split"] == "test" and result["households"] == "validation"
    sim = make_sim(feeder="ieee13", n_agents=20)
    direct = evaluate_policy(sim, RULES["noop"], split="test", days=3, households="validation")
    own = evaluate_policy(sim, RULES["noop"], split="test", days=3)
    assert result["v_min_pu"] == pytest.approx(direct["v_min_pu"], rel=1e-12)
    # the devices' cost does not see the households; the voltages do
    assert own["households"] == "test" and own["v_min_pu"] != pytest.approx(direct["v_min_pu"], rel=1e-9)


def test_cli_evaluates_oracle():
    """``--method oracle`` plans every day and replays it; ``--set iterations=3`` instead of the default cap of
    L-BFGS iterations, which take minutes here (the wiring is what is tested; the optimum is tested below)."""
    code, result, err = run_cli(
        [
            "evaluate",
            "--method",
            "oracle",
            "--feeder",
            "ieee13",
            "--agents",
            "12",
            "--sim-set",
            "step_minutes=60",
            "--days",
            "2",
            "--set",
            "iterations=3",
            "--json",
        ]
    )
    assert code == 0, err
    assert result["method"] == "oracle"
    check_metrics(result, n_agents=12, days=2)
    # one plan of both days, 3 steps (stderr is no terminal here, so the CLI draws no bar: ask the function)
    steps = []
    evaluate_reference(
        "oracle",
        {"feeder": "ieee13", "n_agents": 12, "step_minutes": 60},
        config={"iterations": 3},
        days=2,
        plan_progress=lambda done, total: steps.append((done, total)),
    )
    assert steps == [(1, 3), (2, 3), (3, 3)]
    # the plan's KKT residual is reported per day: 3 iterations stop at the cap, far from the default tolerances
    (plan,) = result["plans"]
    assert plan["iterations"] == 3 and plan["met"] is False and result["kkt_met"] is False
    assert sorted(plan["days"]) == plan["days"] and len(plan["days"]) == 2
    assert [day["day"] for day in plan["kkt"]] == plan["days"]
    for day in plan["kkt"]:
        for key in (
            "stationarity",
            "stationarity_scale",
            "stationarity_relative",
            "complementarity",
            "voltage_infeasibility_pu",
            "device_infeasibility",
        ):
            assert math.isfinite(day[key]) and day[key] >= 0, key
    assert max(day["stationarity_relative"] for day in plan["kkt"]) > OracleConfig.stationarity_rtol


def test_oracle_stops_when_the_kkt_tolerances_are_met():
    """The plan stops as soon as every day meets every tolerance (here at the start, with loose ones), and runs
    to the cap otherwise; the residual is measured at the returned plan (its rollout gives the reported
    feasibility)."""
    sim = make_sim(feeder="ieee13", n_agents=6, step_minutes=60)
    state = reset_days(sim, "test", [102])
    loose = dict(stationarity_rtol=1e6, complementarity_tol=1e12, voltage_tol_pu=1.0, device_tol=1e3)
    _, metrics = plan_days(sim, state, OracleConfig(iterations=20, **loose))
    assert metrics["met"] and metrics["iterations"] == 0
    plan, metrics = plan_days(sim, state, OracleConfig(iterations=4))
    assert not metrics["met"] and metrics["iterations"] == 4
    with torch.no_grad():
        s, worst_device = state, 0.0
        for t in range(sim.n_steps):
            r = sim.step(s, plan[t])
            s, worst_device = r.state, max(worst_device, float(r.device_violation.max()))
    (day,) = metrics["kkt"]
    assert day["device_infeasibility"] == pytest.approx(worst_device, rel=1e-9, abs=1e-12)


def test_oracle_one_sided_derivatives_match_finite_differences():
    """At a battery's ``u = 0`` (idle) the planner's derivatives along ``+u`` and ``-u`` add the kinks that torch
    gives 0 (degradation, efficiencies) through the state of charge's costate; elsewhere they are torch's. Both
    must match one-sided finite differences of the augmented Lagrangian, and of the cost alone (without its
    terminal part: the scale of the KKT test's stationarity)."""
    sim = make_sim(feeder="ieee13", n_agents=5, step_minutes=60)
    state = reset_days(sim, "test", [102])
    plan = DayPlan(sim, state, OracleConfig())
    u = plan.start(RULES["droop"])
    sl = sim.agent_slices["battery"]
    u[:6, :, sl] = 0.3  # charged part of the way (a battery filled to the last bit would tie with its limit)
    u[6:9, :, sl] = 0.0  # idle batteries with a full day ahead
    u[12, :, sl] = 0.5
    h = 1e-6
    checked = 0
    for constraints in (True, False):
        ev = plan.evaluate(u, constraints=constraints)
        for k, i in ((6, sl.start), (8, sl.start + 1), (12, sl.start)):
            for sign, key in ((1.0, "g_plus"), (-1.0, "g_minus")):
                v = u.clone()
                v[k, 0, i] += sign * h
                fd = (plan.evaluate(v, constraints=constraints)["objective"] - ev["objective"]) / (sign * h)
                assert float(ev[key][k, 0, i]) == pytest.approx(fd, rel=1e-4, abs=1e-6), (k, i, key, constraints)
                checked += 1
        # the kink is real: at u = 0 the two sides differ (degradation cost alone adds 2 deg dt p_max)
        assert float(ev["g_plus"][6, 0, sl.start]) != pytest.approx(float(ev["g_minus"][6, 0, sl.start]))
    assert checked == 12
    # the cost alone is the simulator's cost without its terminal part
    with torch.no_grad():
        s, cost = state, 0.0
        for t in range(sim.n_steps):
            r = sim.step(s, ev["actions"][t])
            s, cost = r.state, cost + float((r.cost - r.terminal_cost).sum())
    assert ev["objective"] == pytest.approx(cost, rel=1e-12)


def test_oracle_one_sided_derivatives_at_a_generator_window_tie():
    """A generator at its minimum (``u = 1``) and then at full ramp up (``u = -1``) ends exactly a ramp above
    its minimum output, where the next window's lower bound ``max(p_min, prev - ramp)`` ties: a kink in both
    earlier coordinates, at their bounds, where torch's derivative is the mean of the two pieces. The KKT test's
    derivative along the one direction each can move (``-u`` from 1, ``+u`` from -1) must be that side's."""
    sim = make_sim(feeder="ieee13", n_agents=5, step_minutes=30)
    state = reset_days(sim, "test", [102])
    plan = DayPlan(sim, state, OracleConfig())
    g, p = sim.agent_slices["generator"].start, sim.params["generator"]
    u = plan.start(RULES["droop"])
    k = 10
    u[:k, :, g], u[k, :, g], u[k + 1 :, :, g] = 1.0, -1.0, 0.0
    ev = plan.evaluate(u)
    prev = ev["results"][k].state.p_prev_kw.detach()
    assert float((prev - p.ramp_kw_per_h * sim.dt_h - p.p_min_kw).abs().max()) <= 1e-12  # the tie
    plus, minus = plan.evaluate(u, along=1.0), plan.evaluate(u, along=-1.0)
    h = 1e-6
    for t, sign, side in ((k - 1, -1.0, minus["g_minus"]), (k, 1.0, plus["g_plus"])):
        v = u.clone()
        v[t, 0, g] += sign * h
        fd = (plan.evaluate(v)["objective"] - ev["objective"]) / h  # the derivative along sign * u
        assert sign * float(side[t, 0, g]) == pytest.approx(fd, rel=1e-4), t
        assert sign * float(ev["g_plus"][t, 0, g]) != pytest.approx(fd, rel=1e-2), t  # torch's is neither side's
    # every other derivative and every value is torch's
    assert plus["objective"] == minus["objective"] == ev["objective"]
    others = torch.ones(sim.n_agents, dtype=torch.bool)
    others[g] = False
    assert torch.equal(plus["g_plus"][..., others], ev["g_plus"][..., others])
    assert torch.equal(minus["g_minus"][..., others], ev["g_minus"][..., others])


def test_oracle_stationarity_is_the_projected_gradient_step():
    """The KKT test's stationarity per coordinate is how far a unit projected-gradient step moves it on its
    piece: a coordinate pushed against a bound it sits a rounding error from counts that distance, not its
    derivative (so a plan a rounding error inside its bounds can be stationary); a battery inside its orthant
    counts at most its distance to 0; at a battery's u = 0 the side along which it falls counts, 0 where
    neither does. The KKT test takes that step on the Lagrangian divided by max(1, the largest magnitude of the
    cost gradient)."""
    sim = make_sim(feeder="ieee13", n_agents=5, step_minutes=60)
    state = reset_days(sim, "test", [102])
    plan = DayPlan(sim, state, OracleConfig())
    b, h = sim.agent_slices["battery"].start, sim.agent_slices["heatpump"].start
    just_inside = -1.0 + 2.0**-52
    #          (agent, u, g_plus, g_minus, step)
    cases = [
        (h, just_inside, 0.5, 0.5, 2.0**-52),  # pushed against -1, a rounding error away
        (h, just_inside, -0.5, -0.5, 0.5),  # pulled inside
        (h, 0.2, -3.0, -3.0, 0.8),  # up to the bound at most
        (b, 0.3, 0.5, 0.5, 0.3),  # down to the battery's kink at most
        (b, -0.4, -2.0, -2.0, 0.4),
        (b, 0.0, 0.1, -0.2, 0.0),  # a kink minimum: neither side falls
        (b, 0.0, -0.3, 0.2, 0.3),  # both fall: the steeper
        (b, 0.0, 0.1, 0.2, 0.2),
    ]
    shape = (len(cases), 1, sim.n_agents)
    u, g_plus, g_minus = (torch.zeros(shape, dtype=torch.float64) for _ in range(3))
    for k, (i, value, gp, gm, _) in enumerate(cases):
        u[k, 0, i], g_plus[k, 0, i], g_minus[k, 0, i] = value, gp, gm
    step = plan.projected_step(u, g_plus, g_minus)
    assert step[:, 0].sum(dim=1).tolist() == pytest.approx([c[-1] for c in cases], rel=1e-12, abs=0.0)
    # at a plan: the step of the Lagrangian over max(1, |cost gradient|_inf), the scale from the cost alone
    u = plan.start(RULES["droop"])
    ev = plan.evaluate(u)
    (day,) = plan.kkt(u, ev)
    cost = plan.evaluate(u, constraints=False)
    scale = max(1.0, float(torch.maximum(cost["g_plus"].abs(), cost["g_minus"].abs()).max()))
    g_plus, g_minus = plan.evaluate(u, along=1.0)["g_plus"], plan.evaluate(u, along=-1.0)["g_minus"]
    relative = float(plan.projected_step(u, g_plus / scale, g_minus / scale).max())
    assert day["stationarity_scale"] == pytest.approx(scale, rel=1e-12)
    assert day["stationarity_relative"] == pytest.approx(relative, rel=1e-12)
    assert day["stationarity"] == pytest.approx(relative * scale, rel=1e-12)
    assert OracleConfig.stationarity_rtol < relative <= 2.0  # the start is not stationary


def test_feasible_map_keeps_batteries_and_generators_inside_their_limits():
    """Any ``u`` in [-1, 1] maps onto requests the devices carry out in full (no kW projected away), and the
    map's inverse gives back the same actions."""
    sim = make_sim(feeder="ieee13", n_agents=12, step_minutes=60)
    state = reset_days(sim, "test", [102, 312])
    fmap = FeasibleMap(sim)
    gen = torch.Generator().manual_seed(0)
    s, worst = state, 0.0
    for _ in range(sim.n_steps):
        u = 2 * torch.rand((2, sim.n_agents), generator=gen, dtype=sim.dtype) - 1
        u[:, :3] = torch.tensor([-1.0, 0.0, 1.0])  # the ends and a battery's idle point
        low, high = fmap.ranges(s)
        a = fmap.actions(low, high, u)
        assert torch.allclose(fmap.actions(low, high, fmap.variables(low, high, a)), a, rtol=0, atol=1e-12)
        r = sim.step(s, a)
        kw = torch.cat([r.device_violation[:, sim.agent_slices[n]] for n in ("battery", "generator")], dim=1)
        worst = max(worst, float(kw.max()))
        s = r.state
    assert worst < 1e-9


def test_feasible_map_keeps_the_derivative_of_a_filled_battery():
    """A battery filled to its limit with ``u = 1`` keeps a range that moves with the state of charge: the next
    step's range still answers an earlier request (cut by a constant, ``relu(m - INSIDE_ACTION)``, the range
    after a fill sits at the relu's kink, its derivative is 0, and a plan that fills a battery early can never
    learn to fill it later: the planner stalled 37 % above scipy's SLSQP that way)."""
    sim = make_sim(feeder="ieee13", n_agents=5, step_minutes=60)
    state = reset_days(sim, "test", [102])
    p, sl = sim.params["battery"], sim.agent_slices["battery"]
    # room for a tenth of an hour at full power: u = 1 fills the battery (the range is limited by the room)
    state = dataclasses.replace(state, soc_kwh=(p.soc_max_kwh - 0.1 * p.eta_charge * p.p_max_kw).expand(1, -1))
    fmap = FeasibleMap(sim)
    u = torch.ones((1, sim.n_agents), dtype=sim.dtype, requires_grad=True)
    low, high = fmap.ranges(state)
    room = 0.1 / sim.dt_h  # action units of the room
    assert torch.allclose(high[:, sl], torch.full_like(high[:, sl], room), rtol=1e-6)
    nxt = sim.step(state, fmap.actions(low, high, u)).state
    _, high_next = fmap.ranges(nxt)
    assert bool((high_next[:, sl] > 0).all())  # a fill leaves a share of the room (the cut by a constant none)
    (grad,) = torch.autograd.grad(high_next[:, sl].sum(), u)
    # one unit less of u now leaves `room` more to fill at the next step
    assert torch.allclose(grad[:, sl], torch.full_like(grad[:, sl], -room), rtol=1e-6)


def test_oracle_scores_a_failed_power_flow_as_collapse():
    """A row whose power flow failed is not masked out of the planner's objective: every node counts at 0 pu."""
    sim = make_sim(feeder="ieee13", n_agents=5, step_minutes=60)
    state = reset_days(sim, "test", [102, 312])
    plan = DayPlan(sim, state, OracleConfig())
    r = sim.step(state, torch.zeros((2, sim.n_agents), dtype=sim.dtype))
    failed = dataclasses.replace(r, converged=torch.tensor([True, False]))
    g = plan.voltage_constraint(failed)
    assert torch.equal(g[0], plan.voltage_constraint(r)[0])
    assert torch.allclose(g[1], torch.full_like(g[1], plan.v_lo))


def test_cli_oracle_settings_are_checked():
    base = ["evaluate", "--feeder", "ieee13", "--agents", "5", "--days", "1"]
    code, _, err = run_cli(base + ["--method", "oracle", "--set", "steps=3"])
    assert code == 2 and "unknown OracleConfig field(s) ['steps']" in err
    code, _, err = run_cli(base + ["--method", "oracle", "--set", "iterations=0"])
    assert code == 2 and "iterations must be >= 1" in err
    code, _, err = run_cli(base + ["--method", "droop", "--set", "iterations=3"])
    assert code == 2 and "--set configures --method oracle only" in err


# ----------------------------------------------------------------------------------------------------------
# 2. the optimum beats every rule on cost at equal or lower violation
# ----------------------------------------------------------------------------------------------------------

#: A small case where the agents move the voltages: IEEE-13 with 1,000 agents and light feeder load (half the
#: default load scale, 1 kWp PV per kW, 1.0 pu at the substation), hourly steps. Test day 102 is inside the
#: band under noop and droop, but price-seeking pushes it out (1.3 % of node-steps); on test day 312 every rule
#: violates (noop 1.0 %, price-seeking 2.2 %, droop 0.3 %). Measured over the two days:
#:   noop           cost  384.8 $/day, violation share 0.508 %
#:   price-seeking  cost -320.0 $/day, violation share 1.778 %
#:   droop          cost  393.0 $/day, violation share 0.152 %
SMALL_CASE = dict(feeder="ieee13", n_agents=1000, load_scale=0.5, pv_kwp_per_kw=1.0, source_v_pu=1.0, step_minutes=60)
SMALL_DAYS = [102, 312]


def test_oracle_beats_every_rule_on_cost_at_no_more_violation():
    sim = make_sim(**SMALL_CASE)
    rules = {
        name: evaluate_policy(sim, REFERENCE_POLICIES[name](), split="test", days=SMALL_DAYS) for name in RULE_NAMES
    }
    # the case is a real test: the rules violate the band, and the cheapest rule the most
    assert all(r["violation_share"] > 0 for r in rules.values())
    assert rules["price-seeking"]["violation_share"] > max(rules[n]["violation_share"] for n in ("noop", "droop"))
    # 60 L-BFGS-B iterations (multipliers every 15) instead of the default cap (time), started from the cheapest
    # rule. With 60 iterations between multiplier updates it fails (cost -598.4 $/day, but 0.66 % of
    # node-steps outside the band against noop's 0.51 %): the multipliers must have moved.
    oracle = PerfectForesightPolicy(OracleConfig(iterations=60, inner_iterations=15, init="price-seeking"))
    best = evaluate_policy(sim, oracle, split="test", days=SMALL_DAYS)
    check_metrics(best, n_agents=1000, days=2)
    numbers = {n: (round(r["cost"], 1), r["violation_share"]) for n, r in {**rules, "oracle": best}.items()}
    for name, r in rules.items():
        assert best["cost"] < r["cost"], (name, numbers)
        assert best["violation_share"] <= r["violation_share"], (name, numbers)


# ----------------------------------------------------------------------------------------------------------
# 3. droop has fewer violations than price-seeking on the default task's test days
# ----------------------------------------------------------------------------------------------------------


def test_droop_violates_less_than_price_seeking_on_the_default_task():
    """IEEE-123, 1,000 agents, all 70 test days (about 8 s per rule). Measured: price-seeking 5.72 % of
    node-steps outside the band (cost -209.3 $/day), droop 2.59 % (cost 667.9 $/day); the droop curves were
    tuned on the validation days (price-seeking 4.48 %, droop 1.67 %)."""
    sim = make_sim()
    assert sim.n_agents == 1000
    ps = evaluate_policy(sim, RULES["price-seeking"], split="test")
    droop = evaluate_policy(sim, RULES["droop"], split="test")
    assert ps["days"] == droop["days"] == 70
    assert ps["pf_failures"] == droop["pf_failures"] == 0
    message = f"droop {droop['violation_share']:.4%} vs price-seeking {ps['violation_share']:.4%}"
    assert droop["violation_share"] < ps["violation_share"], message
    # not by a hair: the point is that local volt-watt control removes most of the violations
    assert droop["violation_share"] < 0.5 * ps["violation_share"], message


# ----------------------------------------------------------------------------------------------------------
# 4. bad input
# ----------------------------------------------------------------------------------------------------------


def test_evaluate_unknown_method_is_a_clear_error():
    code, _, err = run_cli(["evaluate", "--method", "dro0p", "--feeder", "ieee13", "--agents", "5"])
    assert code == 2
    assert "gridedge evaluate: error: unknown method 'dro0p'" in err
    for name in REFERENCE_POLICIES:
        assert name in err  # the known methods are listed
    code, _, err = run_cli(["evaluate", "--feeder", "ieee13"])  # neither a run directory nor --method
    assert code == 2 and "--method" in err


def test_train_ssl_bad_settings_are_clear_errors(tmp_path):
    base = ["train", "ssl", "--feeder", "ieee13", "--agents", "5", "--iterations", "1"]
    code, _, err = run_cli(base + ["--out", str(tmp_path / "a"), "--set", "reuse=2"])
    assert code == 2 and "unknown SSLConfig field" in err and "reuse" in err  # SSL has no reuse
    code, _, err = run_cli(base + ["--out", str(tmp_path / "b"), "--set", "batch_size=2"])
    assert code == 2 and "unknown SSLConfig field" in err and "batch_size" in err
    assert not (tmp_path / "a" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "breakpoints",
    [
        (0.96, 0.95, 1.01, 1.07),  # v_low_full above v_low_zero
        (0.925, 1.01, 1.01, 1.07),  # empty dead band
        (0.925, 1.02, 1.01, 1.07),  # v_low_zero above v_high_zero
        (0.925, 0.995, 1.08, 1.07),  # v_high_zero above v_high_full
    ],
)
def test_droop_curves_reject_unordered_breakpoints(breakpoints):
    with pytest.raises(ValueError, match="droop breakpoints must satisfy"):
        DroopCurves(*breakpoints)


def test_droop_curves_accept_ordered_breakpoints():
    DroopCurves(0.95, 0.95, 1.05, 1.05)  # vertical curves are allowed (<=), only the dead band must be open
    low, high = DroopCurves(0.925, 0.995, 1.01, 1.07).shares(torch.tensor([0.9, 0.96, 1.0, 1.04, 1.1]))
    assert low.tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0, 0.0])
    assert high.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.5, 1.0])


def test_oracle_and_ssl_configs_reject_bad_values():
    for bad, words in [
        ({"iterations": 0}, "iterations"),
        ({"stationarity_rtol": 0.0}, "stationarity_rtol must be > 0"),
        ({"margin_pu": -0.01}, "margin_pu"),
        ({"rho_growth": 0.5}, "rho_growth"),
        ({"init": "greedy"}, "init must be one of"),
    ]:
        with pytest.raises(ValueError, match=words):
            OracleConfig(**bad)
    with pytest.raises(ValueError, match="voltage_penalty must be >= 0"):
        ssl_penalty_config(voltage_penalty=-1.0)
    with pytest.raises(ValueError, match="unknown SSLConfig field.*clip_radius"):
        ssl_config(clip_radius=0.1)
    assert ssl_penalty_config().fixed_penalties and not ssl_config().fixed_penalties


def test_oracle_needs_whole_days():
    sim = make_sim(feeder="ieee13", n_agents=6, step_minutes=60)
    state = reset_days(sim, "test", [102])
    later = sim.step(state, RULES["noop"](sim, state)).state
    with pytest.raises(ValueError, match="from their first step"):
        plan_days(sim, later, OracleConfig(iterations=1))
    with pytest.raises(ValueError, match="first step"):
        PerfectForesightPolicy(OracleConfig(iterations=1))(sim, later)  # no plan yet
