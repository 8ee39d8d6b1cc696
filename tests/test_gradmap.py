"""GradMAP / GradMA trainer: smoke runs, exact resume, decentralisation, clipping, GradMA == GradMAP(K=1), CLI.

Everything in the default suite runs on IEEE-13 with 20 agents and 2-day rollouts; the learning test on
a feasible 1,000-agent IEEE-13 task is marked slow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import json
import re

import pytest
import torch

from baselines.rules import RULES
from gradmap_agent import (
    DivergenceError,
    GradMAPConfig,
    ObsNormalizer,
    StackedMLPPolicy,
    gradma_config,
    gradmap_config,
)
from gradmap_agent.config import LagrangianConfig, flatten_config
from gradmap_agent.losses import (
    MULTIPLIER_FIELDS,
    Multipliers,
    clip_grad_norm_per_agent_,
    dual_update,
    step_lagrangian,
)
from gradmap_agent.networks import hidden_tanh, policy_input, rule_and_bounds, squash
from gradmap_agent.replay import current_weights
from gridedge_env import make_sim
from gridedge_env.metrics import DEVICE_METRIC_NAMES
from gridedge_run import EVAL_KEYS, evaluate_policy, load_policies, obs_policy, train
from gridedge_run.methods import TRAIN_METHODS

TIME_FIELDS = ("wall_s", "rollout_s", "update_s", "time_left_s")


@pytest.fixture(scope="module")
def sim13():
    return make_sim(feeder="ieee13", n_agents=20)


def tiny(**overrides) -> GradMAPConfig:
    fields = {"iterations": 3, "batch_days": 2, "hidden": 8, "checkpoint_every": 1}
    fields.update(overrides)
    return gradmap_config(**fields)


def strip_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIME_FIELDS} for row in rows]


def params_equal(a: dict, b: dict) -> bool:
    same = all(torch.equal(a["policy"][k], b["policy"][k]) for k in a["policy"])
    na, nb = a["normalizer"], b["normalizer"]
    return same and all(torch.equal(na[k], nb[k]) for k in ("count", "mean", "m2"))


# ----------------------------------------------------------------------------------------------------------


def test_smoke_train_ieee13(sim13):
    make_policy, params, metrics = train(sim13, tiny())
    assert metrics["iterations"] == 3 and len(metrics["history"]) == 3
    for row in metrics["history"]:
        for key in ("lagrangian", "cost", "violation_share", "worst_violation_pu", *DEVICE_METRIC_NAMES):
            assert isinstance(row[key], float) and row[key] == row[key], key  # finite, not NaN
        assert row["pf_failures"] == 0
    policy = make_policy(params)
    state = sim13.reset(3, seed=1, split="test")
    a = policy(state.obs)
    assert a.shape == (3, sim13.n_agents) and a.dtype == state.obs.dtype
    assert bool((a.abs() <= 1).all())
    assert torch.equal(a, policy(state.obs))  # deterministic mean


@pytest.mark.parametrize(
    "options", [{}, {"policy_average": 0.7}, {"hard_scenario_share": 0.5, "hard_scenario_pool": 3}]
)
def test_resume_gives_identical_continuation(sim13, tmp_path, options):
    config = tiny(iterations=4, reuse=2, minibatches=2, **options)
    _, params_a, metrics_a = train(sim13, config, out_dir=tmp_path / "a")

    def stop_after_two(row):
        if row["iteration"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(sim13, config, progress_fn=stop_after_two, out_dir=tmp_path / "b")
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert saved["iteration"] == 2
    _, params_b, metrics_b = train(sim13, config, out_dir=tmp_path / "b", resume=True)
    assert params_equal(params_a, params_b)
    assert strip_times(metrics_a["history"]) == strip_times(metrics_b["history"])
    csv_b = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    assert len(csv_b) == 5  # header + 4 iterations, no duplicates after the resume


@pytest.mark.parametrize("options", [{"policy_average": 0.7}, {"hard_scenario_share": 0.5, "hard_scenario_pool": 3}])
def test_ssl_replay_and_averaging_resume_exactly(sim13, tmp_path, options):
    """SSL composes GradMAP's replay and averaging (`gradmap_agent.replay`): they change its training, and a
    resumed run continues bit for bit (the pool and the average are in its checkpoint)."""
    from baselines.ssl import ssl_config

    fields = {"iterations": 4, "batch_days": 4, "hidden": 8, "checkpoint_every": 1}
    _, plain, _ = train(sim13, ssl_config(**fields), out_dir=tmp_path / "plain")
    _, params_a, metrics_a = train(sim13, ssl_config(**fields, **options), out_dir=tmp_path / "a")
    assert not params_equal(plain, params_a)

    def stop_after_two(row):
        if row["iteration"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(sim13, ssl_config(**fields, **options), progress_fn=stop_after_two, out_dir=tmp_path / "b")
    _, params_b, metrics_b = train(sim13, ssl_config(**fields, **options), out_dir=tmp_path / "b", resume=True)
    assert params_equal(params_a, params_b)
    assert strip_times(metrics_a["history"]) == strip_times(metrics_b["history"])


def test_policy_average_is_the_moving_average_of_the_iterates(sim13, tmp_path):
    """With `policy_average` beta, the returned and exported policies hold avg_k = beta avg_(k-1) + (1 - beta)
    theta_k over the iterates theta_k (avg_0 = the initial weights), while the checkpoint keeps the last iterate
    for training on."""
    beta = 0.6
    iterates = []
    train_module = importlib.import_module("gradmap_agent.train")

    class Recording(train_module.GradMAPTrainer):
        def iterate(self):
            row = super().iterate()
            iterates.append(current_weights(self.policy))
            return row

    initial = current_weights(train_module.GradMAPTrainer(sim13, tiny(policy_average=beta)).policy)
    _, params, _ = train(sim13, tiny(policy_average=beta), out_dir=tmp_path, trainer_cls=Recording)
    assert len(iterates) == 3
    exported = torch.load(tmp_path / "policies.pt", weights_only=True)["params"]["policy"]
    last = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["policy"]
    for name, value in initial.items():
        expected = value.double()
        for theta in iterates:
            expected = beta * expected + (1 - beta) * theta[name].double()
        torch.testing.assert_close(params["policy"][name].double(), expected, rtol=1e-5, atol=1e-7)
        assert torch.equal(exported[name], params["policy"][name])
        assert torch.equal(last[name], iterates[-1][name])
    assert not torch.equal(params["policy"]["weights.0"], iterates[-1]["weights.0"])


def test_resume_refuses_a_changed_config(sim13, tmp_path):
    train(sim13, tiny(iterations=1), out_dir=tmp_path)
    with pytest.raises(ValueError, match="lr"):
        train(sim13, tiny(iterations=2, lr=0.5), out_dir=tmp_path, resume=True)


def test_divergence_stops_and_keeps_last_good_checkpoint(sim13, tmp_path, monkeypatch):
    train_module = importlib.import_module("gradmap_agent.train")
    calls = {"n": 0}

    def poisoned(result, t, *args, **kwargs):
        total, dev, w = step_lagrangian(result, t, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] > sim13.n_steps:  # the second rollout
            total = total * float("nan")
        return total, dev, w

    monkeypatch.setattr(train_module, "step_lagrangian", poisoned)
    with pytest.raises(DivergenceError, match="non-finite Lagrangian"):
        train(sim13, tiny(iterations=3, checkpoint_every=10), out_dir=tmp_path)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["iteration"] == 1
    assert all(bool(torch.isfinite(v).all()) for v in saved["policy"].values())
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 2


def test_evaluation_keys(sim13):
    result = evaluate_policy(sim13, RULES["noop"], split="test", days=2)
    for key in EVAL_KEYS:
        assert key in result, key
    assert result["days"] == 2 and result["n_agents"] == sim13.n_agents
    assert 0.0 <= result["violation_share"] <= 1.0
    # the batch size does not change the numbers
    other = evaluate_policy(sim13, RULES["noop"], split="test", days=2, batch=1)
    assert other["cost"] == pytest.approx(result["cost"], rel=1e-12)
    assert other["violation_share"] == result["violation_share"]


def test_per_agent_gradient_clipping_does_not_couple_agents():
    torch.manual_seed(0)
    policy = StackedMLPPolicy(3, 5, hidden=4)
    params = list(policy.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 0.01
        p.grad[0] *= 1e4  # agent 0 has a huge gradient
    before = [p.grad.clone() for p in params]
    norms = clip_grad_norm_per_agent_(params, max_norm=1.0)
    assert norms[0] > 1.0 and bool((norms[1:] < 1.0).all())
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.grad[1:], b[1:])  # the other agents are untouched
    after = torch.sqrt(sum(p.grad[0].double().pow(2).sum() for p in params))
    assert float(after) == pytest.approx(1.0, rel=1e-5)


def test_hidden_tanh_is_tanh_with_tanh_gradient():
    x = torch.linspace(-12.0, 12.0, 2001, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(hidden_tanh, (x[::50].detach().requires_grad_(True),))
    y = hidden_tanh(x)
    torch.testing.assert_close(y, torch.tanh(x), rtol=0, atol=1e-15)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, 1 - torch.tanh(x.detach()) ** 2, rtol=0, atol=1e-15)
    x32 = x.detach().float()
    assert float((hidden_tanh(x32) - torch.tanh(x32)).abs().max()) <= 3e-7


def test_no_parameter_sharing():
    torch.manual_seed(0)
    policy = StackedMLPPolicy(6, 8, hidden=16)
    with torch.no_grad():
        policy.weights[-1].normal_()  # make the outputs depend on the weights visibly
    obs = torch.randn(4, 6, 8)
    rule = torch.stack([torch.rand(4, 6) * 2 - 1, -torch.ones(4, 6), torch.ones(4, 6)], dim=-1)
    base = policy.act(obs, rule).detach()
    with torch.no_grad():
        for w in policy.weights:
            w[2] += 0.5
    changed = policy.act(obs, rule).detach()
    moved = (changed - base).abs().amax(dim=0)
    assert moved[2] > 0 and bool((moved[[0, 1, 3, 4, 5]] == 0).all())
    # and each agent sees only its own observation
    obs2 = obs.clone()
    obs2[:, 4] += 1.0
    diff = (policy.act(obs2, rule) - policy.act(obs, rule)).detach().abs().amax(dim=0)
    assert diff[4] > 0 and bool((diff[[0, 1, 2, 3, 5]] == 0).all())
    rule2 = rule.clone()
    rule2[:, 1, 0] = -rule2[:, 1, 0]
    diff = (policy.act(obs, rule2) - policy.act(obs, rule)).detach().abs().amax(dim=0)
    assert diff[1] > 0 and bool((diff[[0, 2, 3, 4, 5]] == 0).all())


def test_squash_is_a_residual_around_the_rule_with_slope_on_the_side_with_room():
    rule = torch.tensor([-1.0, -0.6, 0.0, 0.3, 1.0], dtype=torch.float64)
    full = lambda r: torch.stack([r, -torch.ones_like(r), torch.ones_like(r)], dim=-1)  # noqa: E731
    zero = torch.zeros(5, dtype=torch.float64)
    torch.testing.assert_close(squash(zero, full(rule)), rule, rtol=0, atol=0)  # u = 0: the rule itself
    torch.testing.assert_close(squash(zero, full(zero)), zero)
    u = torch.linspace(-6, 6, 241, dtype=torch.float64)[:, None].expand(-1, 5)
    a = squash(u, full(rule).expand(241, -1, -1))
    assert bool((a >= -1).all() and (a <= 1).all())
    assert bool((a[1:] >= a[:-1]).all())  # monotone in u
    torch.testing.assert_close(a[-1], torch.ones(5, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(a[0], -torch.ones(5, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(squash(u[:, 2], full(zero[:1].expand(241))), torch.tanh(u[:, 2]))  # rule 0: tanh
    # slope at u = 0 towards the side with room: 1 + rule below, 1 - rule above (a generator at its minimum, +1,
    # can still be moved down with slope 2, where tanh(u + atanh(rule)) would have slope 0)
    for side, expected in ((-1e-7, 1 + rule), (1e-7, 1 - rule)):
        x = torch.full((5,), side, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(squash(x, full(rule)).sum(), x)
        torch.testing.assert_close(g, expected, rtol=1e-6, atol=1e-12)


def test_squash_stays_inside_the_action_bounds_around_the_rule_clipped_into_them():
    """Narrower bounds: every action inside them, u = 0 the rule clipped into them, the ends reached, and a
    collapsed range (low == high) one action whatever u."""
    rule = torch.tensor([0.0, 1.0, -1.0, 0.5, 0.2], dtype=torch.float64)
    low = torch.tensor([-0.3, -0.8, -0.5, 0.2, 0.2], dtype=torch.float64)
    high = torch.tensor([0.6, 0.4, 0.1, 0.9, 0.2], dtype=torch.float64)
    bounds = torch.stack([rule, low, high], dim=-1)
    u = torch.linspace(-8, 8, 321, dtype=torch.float64)[:, None].expand(-1, 5)
    a = squash(u, bounds.expand(321, -1, -1))
    assert bool((a >= low - 1e-12).all() and (a <= high + 1e-12).all())
    assert bool((a[1:] >= a[:-1]).all())
    torch.testing.assert_close(a[160], rule.clamp(low, high), rtol=0, atol=1e-12)  # u = 0 (to rounding)
    torch.testing.assert_close(a[0], low, atol=1e-6, rtol=0)
    torch.testing.assert_close(a[-1], high, atol=1e-6, rtol=0)
    torch.testing.assert_close(a[:, 4], torch.full((321,), 0.2, dtype=torch.float64))


def test_gradma_is_gradmap_with_k1(sim13):
    """Same code path: GradMAP with K=1 (whatever its trust region) takes GradMA's steps."""
    _, p_gradma, m_gradma = train(sim13, gradma_config(iterations=2, batch_days=2, hidden=8))
    _, p_k1, m_k1 = train(
        sim13, gradmap_config(iterations=2, batch_days=2, hidden=8, reuse=1, minibatches=1, clip_radius=0.05)
    )
    assert params_equal(p_gradma, p_k1)
    for a, b in zip(m_gradma["history"], m_k1["history"], strict=True):
        assert a["lagrangian"] == b["lagrangian"] and a["cost"] == b["cost"]


#: Tiny settings of every trained method (IEEE-13, 20 agents, 2 days per rollout).
TINY = {
    "gradmap": {"batch_days": 2, "hidden": 8},
    "gradma": {"batch_days": 2, "hidden": 8},
    "ssl": {"batch_days": 2, "hidden": 8},
    "ssl-penalty": {"batch_days": 2, "hidden": 8},
    "ippo": {"num_envs": 2, "hidden": 8, "critic_hidden": 16, "epochs": 1, "minibatches": 1},
    "mappo": {"num_envs": 2, "hidden": 8, "critic_hidden": 16, "epochs": 1, "minibatches": 1},
}


@pytest.mark.parametrize(
    "method", [m if m == "gradmap" else pytest.param(m, marks=pytest.mark.slow) for m in sorted(TRAIN_METHODS)]
)
def test_learning_rate_at_iteration_k_does_not_depend_on_the_budget(sim13, method):
    """A longer budget (iterations, and minutes besides) leaves the learning rate of the first iterations as it
    was: the schedule is indexed by iteration (the old schedule over the budget fails this)."""
    spec = TRAIN_METHODS[method]
    lrs = []
    for budget in ({"iterations": 2}, {"iterations": 3, "minutes": 60.0}):
        config = spec.make_config(**TINY[method], **budget, lr_schedule="cosine", lr_decay_iterations=2)
        _, _, metrics = train(sim13, config, method=method)
        lrs.append([row["lr"] for row in metrics["history"]])
    assert lrs[0] == lrs[1][:2]
    assert lrs[1][2] < lrs[1][1] < lrs[1][0]  # the schedule decays: the check compares something
    assert lrs[1][2] == pytest.approx(0.1 * lrs[1][0])  # the final rate from the horizon on


@pytest.mark.parametrize("window", [1, 4])
def test_gradma_update_direction_is_the_chain_rule(sim13, window):
    """The surrogate's parameter gradient equals dL/dtheta of a rollout with the policy in the graph, truncated
    as ssl truncates it (the observations' graph cut every ``window`` steps), with the network terms of the
    Lagrangian switched on (linear multipliers and the augmented quadratic term). With window 4 the
    environment gradient must carry the later policies' reactions to the observations an action changes: an
    environment gradient that holds later actions fixed (window 1) fails the check at 4."""
    from gradmap_agent.train import GradMAPTrainer

    config = gradma_config(
        iterations=1,
        batch_days=2,
        hidden=8,
        policy_dtype="float64",
        voltage_multiplier_init=100.0,
        voltage_quadratic=1e5,
        bptt_window=window,
    )
    trainer = GradMAPTrainer(sim13, config)
    rng = trainer.gen.get_state()
    roll = trainer.rollout()
    params = list(trainer.policy.parameters())
    n_steps, batch, n = roll["a_old"].shape
    a_new = trainer.policy.act(
        roll["x"].reshape(n_steps * batch, n, -1),
        rule_and_bounds(roll["raw_obs"]).reshape(-1, n, 3),
        roll["noise"].reshape(-1, n),
    )
    surrogate = (roll["grad"].reshape(-1, n) * (a_new - roll["a_old"].reshape(-1, n))).sum()
    g_surrogate = torch.autograd.grad(surrogate, params)

    trainer.gen.set_state(rng)  # replay the same days and noise with the policy inside the graph
    seed = int(torch.randint(0, 2**62, (1,), generator=trainer.gen))
    noise = torch.randn((n_steps, batch, n), generator=trainer.gen, dtype=torch.float64)
    state = sim13.reset(batch, seed=seed, split="train")
    total, violated = 0.0, False
    for t in range(n_steps):
        obs = policy_input(state.obs, t, window)
        a = trainer.policy.act(trainer.normalizer.normalize(obs), rule_and_bounds(obs), noise[t])
        r = sim13.step(state, a)
        term, _, w = step_lagrangian(
            r,
            t,
            trainer.multipliers,
            sim13.config.v_min_pu,
            sim13.config.v_max_pu,
            config.lagrangian.voltage_margin_pu,
            config.lagrangian.voltage_quadratic,
        )
        total = total + term
        violated = violated or bool((w > 0).any())
        state = r.state
    assert violated, "the check needs voltage violations, else the network terms are not exercised"
    g_direct = torch.autograd.grad(total / batch, params)
    for gs, gd in zip(g_surrogate, g_direct, strict=True):
        torch.testing.assert_close(gs, gd, rtol=1e-6, atol=1e-9)
    if window > 1:  # the reactions matter here: without them the direction differs
        held = GradMAPTrainer(sim13, dataclasses.replace(config, bptt_window=1))
        held.gen.set_state(rng)
        roll1 = held.rollout()
        assert not torch.allclose(roll1["grad"], roll["grad"], rtol=1e-3, atol=0.0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"voltage_quadratic": -1.0}, "voltage_quadratic must be finite and >= 0"),
        ({"voltage_dual_lr": float("nan")}, "voltage_dual_lr must be finite and >= 0"),
        (
            {"voltage_multiplier_init": 1e4, "max_multiplier": 100.0},
            "voltage_multiplier_init (10000.0) must be at most",
        ),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"policy_average": 1.0}, "policy_average must be in [0, 1)"),
        ({"hard_scenario_share": -0.1}, "hard_scenario_share must be in [0, 1]"),
        ({"hard_scenario_pool": 0}, "hard_scenario_pool must be >= 1"),
    ],
)
def test_config_rejects_bad_values(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        gradmap_config(**fields)


def test_hard_scenarios_are_replayed_with_their_households(sim13):
    """With `hard_scenario_share`, the pool keeps the highest-scoring (day, reset seed) scenarios, a replayed
    row re-runs its scenario exactly (same day, household load and initial device states), and its score is
    refreshed by the new rollout."""
    from gradmap_agent.train import GradMAPTrainer
    from gridedge_env.episodes import reset_scenarios

    trainer = GradMAPTrainer(sim13, tiny(batch_days=4, hard_scenario_share=0.5, hard_scenario_pool=3))
    pool = trainer.pool
    first = pool.draw(4, trainer.gen)
    assert first["pooled"].tolist() == [-1] * 4  # empty pool: every row fresh
    roll = trainer.rollout()
    per_row = roll["voltage_violation"].amax(dim=(0, 2)).to(torch.float64)
    assert pool.score.tolist() == sorted(per_row.tolist(), reverse=True)[:3]
    assert len(pool.day) == 3

    scenarios = pool.draw(4, trainer.gen)
    pooled = scenarios["pooled"]
    assert (pooled[:2] == -1).all() and (pooled[2:] >= 0).all()
    assert len(set(pooled[2:].tolist())) == 2  # without replacement
    i = int(pooled[2])
    day, seed = int(pool.day[i]), int(pool.seed[i])
    assert int(scenarios["day"][2]) == day and int(scenarios["seed"][2]) == seed
    again = reset_scenarios(sim13, "train", [day, day], [seed, seed + 1])
    original = reset_scenarios(sim13, "train", [day], [seed])
    torch.testing.assert_close(again.load_p_kw[:1], original.load_p_kw, rtol=0, atol=0)
    torch.testing.assert_close(again.soc_kwh[:1], original.soc_kwh, rtol=0, atol=0)
    assert not torch.equal(again.load_p_kw[1], again.load_p_kw[0])  # another seed: other households

    # a replayed scenario that is now held (score 0) leaves the pool when fresh ones score higher
    worst = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)  # the two fresh rows: 1 pu
    pool.update(scenarios, worst)
    assert pool.score.tolist()[:2] == [1.0, 1.0] and len(pool.score) == 3
    assert set(pool.seed[:2].tolist()) == set(scenarios["seed"][:2].tolist())


def test_replayed_scenarios_do_not_move_the_multipliers(sim13):
    """The dual step estimates expectation constraints from the fresh rows only: whatever the replayed hard
    scenarios violate, the multipliers move as they would without it; at least one row stays fresh."""
    import copy

    from gradmap_agent.train import GradMAPTrainer

    trainer = GradMAPTrainer(sim13, tiny(batch_days=4, hard_scenario_share=1.0, hard_scenario_pool=8))
    trainer.rollout()
    roll = trainer.rollout()
    assert roll["fresh"].tolist() == [True, False, False, False]  # share 1 leaves one fresh row
    results = []
    for replayed_violation in (0.0, 1.0):
        changed = dict(roll)
        changed["device_violation"] = roll["device_violation"].clone()
        changed["voltage_violation"] = roll["voltage_violation"].clone()
        changed["device_violation"][:, 1:] = replayed_violation
        changed["voltage_violation"][:, 1:] = replayed_violation
        other = copy.deepcopy(trainer.multipliers)
        trainer_multipliers, trainer.multipliers = trainer.multipliers, other
        trainer.dual_step(changed)
        trainer.multipliers = trainer_multipliers
        results.append(other)
    assert torch.equal(results[0].device, results[1].device)
    assert torch.equal(results[0].voltage, results[1].voltage)
    assert not torch.equal(results[0].voltage, trainer.multipliers.voltage)  # the fresh row did move them


def test_step_lagrangian_quadratic_term():
    """The augmented term adds (rho / 2) w^2 per node-step of margin-tightened violation, and only that."""
    from types import SimpleNamespace

    v = torch.tensor([[0.93, 1.0, 1.06]], dtype=torch.float64)
    result = SimpleNamespace(
        converged=torch.tensor([True]),
        device_violation=torch.zeros(1, 2, dtype=torch.float64),
        terminal_shortfall=torch.zeros(1, 2, dtype=torch.float64),
        v_mag_pu=v,
        cost=torch.tensor([[1.0, 2.0]], dtype=torch.float64),
    )
    mult = Multipliers({"battery": slice(0, 2)}, torch.ones(2), 1, 3, voltage_init=10.0)
    plain, _, w = step_lagrangian(result, 0, mult, 0.95, 1.05, margin_pu=0.01)
    augmented, _, _ = step_lagrangian(result, 0, mult, 0.95, 1.05, margin_pu=0.01, voltage_quadratic=100.0)
    torch.testing.assert_close(w, torch.tensor([[0.03, 0.0, 0.02]], dtype=torch.float64))
    torch.testing.assert_close(plain, torch.tensor(3.0 + 10.0 * 0.05, dtype=torch.float64))
    torch.testing.assert_close(augmented - plain, torch.tensor(50.0 * (0.03**2 + 0.02**2), dtype=torch.float64))


def test_failed_power_flow_raises_the_lagrangian():
    """A row whose power flow failed pays the stated penalty (every node scored at 0 pu: w = v_min + margin)
    without a gradient through its voltages, keeps its cost and device terms, and counts in the dual step."""
    from types import SimpleNamespace

    def result(converged):
        v = torch.tensor([[1.0, 1.0, 1.0], [float("nan"), 1.0, 1.0]], dtype=torch.float64, requires_grad=True)
        cost = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
        device = torch.tensor([[0.0, 0.0], [0.5, 0.0]], dtype=torch.float64)
        return SimpleNamespace(
            converged=torch.tensor(converged),
            device_violation=device,
            terminal_shortfall=torch.zeros_like(device),
            v_mag_pu=v,
            cost=cost,
        )

    mu, lam, rho, margin = 10.0, 2.0, 100.0, 0.01
    mult = Multipliers({"battery": slice(0, 2)}, torch.ones(2), 1, 3, device_init=lam, voltage_init=mu)
    failed = result([True, False])
    total, dev, w = step_lagrangian(failed, 0, mult, 0.95, 1.05, margin, voltage_quadratic=rho)
    w_fail = 0.95 + margin
    torch.testing.assert_close(w, torch.tensor([[0.0] * 3, [w_fail] * 3], dtype=torch.float64))
    expected = 10.0 + lam * 0.5 + 3 * (mu * w_fail + 0.5 * rho * w_fail**2)
    torch.testing.assert_close(total, torch.tensor(expected, dtype=torch.float64))
    total.backward()
    assert bool(torch.isfinite(failed.v_mag_pu.grad).all()) and bool((failed.v_mag_pu.grad == 0).all())
    assert bool((failed.cost.grad == 1.0).all())  # the failed row's cost keeps its gradient
    # the same step with the row converged (in the band, apart from the NaN replaced by 1.0) is cheaper
    ok = result([True, True])
    ok.v_mag_pu = torch.ones(2, 3, dtype=torch.float64)
    total_ok, _, _ = step_lagrangian(ok, 0, mult, 0.95, 1.05, margin, voltage_quadratic=rho)
    assert float(total.detach()) > float(total_ok.detach()) + 3 * mu * w_fail
    # the dual step counts the failed row's violation at every node (mean over the two rows)
    config = LagrangianConfig(voltage_dual_lr=1.0, voltage_violation_budget=0.0)
    dual_update(mult, dev[None], w[None], config)
    torch.testing.assert_close(mult.voltage, torch.full((1, 3), mu + w_fail / 2, dtype=torch.float64))


def test_dual_update_uses_per_type_budgets_in_their_units():
    """Battery and generator violations count in kWh (kW x step hours), heat pumps in K-steps, each against its
    own budget per device and day."""
    slices = {"battery": slice(0, 1), "heatpump": slice(1, 2), "generator": slice(2, 3)}
    mult = Multipliers(slices, torch.tensor([0.5, 1.0, 0.5]), 2, 1, device_init=5.0)
    # [T=2, B=2, N=3]: per day on average battery 1.0 kW-steps = 0.5 kWh, heat pump 0.3 K-steps, generator 0
    dev = torch.tensor([[[1.0, 0.2, 0.0], [0.0, 0.0, 0.0]], [[1.0, 0.2, 0.0], [0.0, 0.2, 0.0]]], dtype=torch.float64)
    config = LagrangianConfig(
        device_dual_lr=2.0,
        dual_excess_clip=0.0,
        battery_undelivered_kwh_budget=0.2,
        heatpump_comfort_k_steps_budget=0.5,
        generator_undelivered_kwh_budget=1.0,
    )
    dual_update(mult, dev, torch.zeros(2, 2, 1, dtype=torch.float64), config)
    expected = [5.0 + 2.0 * (0.5 - 0.2), 5.0 + 2.0 * (0.3 - 0.5), max(5.0 + 2.0 * (0.0 - 1.0), 0.0)]
    torch.testing.assert_close(mult.device, torch.tensor(expected, dtype=torch.float64))
    summary = mult.summary()
    assert list(summary) == list(MULTIPLIER_FIELDS)
    assert summary["battery_multiplier_max"] == pytest.approx(expected[0])
    assert summary["heatpump_multiplier_mean"] == pytest.approx(expected[1])


def test_dual_excess_clip_bounds_each_step_by_the_budget():
    """With ``dual_excess_clip`` c a dual step moves a multiplier by at most ``lr * c * budget`` either way (per
    agent against its type's budget, per node and step against the voltage budget); within the clip it is the
    plain step."""
    slices = {"battery": slice(0, 1), "heatpump": slice(1, 3)}
    mult = Multipliers(slices, torch.tensor([0.25, 1.0, 1.0]), 2, 1, device_init=100.0, voltage_init=1e4)
    # per day: battery 100 kWh (far above 0.1), heat pumps 245 K-steps (far above) and 0.15 K-steps (within)
    dev = torch.tensor([[[200.0, 122.5, 0.075]]], dtype=torch.float64).expand(2, 1, 3)
    w = torch.tensor([[[0.05]], [[0.0]]], dtype=torch.float64)  # [T=2, B=1, n=1]
    config = LagrangianConfig(
        device_dual_lr=100.0,
        voltage_dual_lr=2e5,
        dual_excess_clip=1.0,
        dual_lr_decay_iterations=0.0,
        battery_undelivered_kwh_budget=0.1,
        heatpump_comfort_k_steps_budget=0.1,
        voltage_violation_budget=3e-3,
    )
    dual_update(mult, dev, w, config)
    torch.testing.assert_close(mult.device, torch.tensor([110.0, 110.0, 105.0], dtype=torch.float64))
    torch.testing.assert_close(mult.voltage, torch.tensor([[1e4 + 600.0], [1e4 - 600.0]], dtype=torch.float64))
    # a zero budget is not clipped (its clip would stop the dual ascent)
    zero = dataclasses.replace(config, battery_undelivered_kwh_budget=0.0, voltage_violation_budget=0.0)
    dual_update(mult, dev, w, zero)
    assert float(mult.device[0]) == pytest.approx(110.0 + 100.0 * 100.0)
    assert float(mult.voltage[0, 0]) == pytest.approx(1e4 + 600.0 + 2e5 * 0.05)


def test_terminal_shortfall_is_part_of_the_device_constraint(sim13):
    """A day of feasible battery discharges (nothing projected away) that ends short of the initial charge
    violates the learner's device constraint on the last step by the shortfall (kWh / step hours), its
    gradient reaches the last step's battery actions through the agents' own multipliers, and the dual step
    raises those multipliers although no request was ever cut."""
    from gridedge_env.core import feasible_action_bounds

    sim = sim13
    bat, hp = sim.agent_slices["battery"], sim.agent_slices["heatpump"]
    mult = Multipliers.for_sim(sim, device_init=10.0)
    state = sim.reset(2, seed=0, split="train")
    devs = []
    for t in range(sim.n_steps):
        low, _ = feasible_action_bounds(sim, state)
        actions = torch.zeros(2, sim.n_agents, dtype=sim.dtype)
        actions[:, bat] = 0.5 * low[:, bat]  # discharge half of what is available: never cut, never empty
        actions.requires_grad_(t == sim.n_steps - 1)
        result = sim.step(state, actions)
        total, dev, _ = step_lagrangian(result, t, mult, 0.95, 1.05, 0.01)
        devs.append(dev)
        state = result.state
    assert float(result.device_violation[:, bat].detach().abs().max()) < 1e-12
    shortfall_kwh = result.terminal_shortfall[:, bat].detach()
    assert float(shortfall_kwh.min()) > 0.0
    torch.testing.assert_close(dev[:, bat], shortfall_kwh / sim.dt_h)
    torch.testing.assert_close(dev[:, hp], result.device_violation[:, hp] + result.terminal_shortfall[:, hp])
    assert all(float(d[:, bat].abs().max()) < 1e-12 for d in devs[:-1])
    # the last step's battery actions: the price and the multiplier (10 $ per kW-step) both pull towards charging
    (grad,) = torch.autograd.grad(total, actions)
    p = sim.params["battery"]
    price_only = -sim.config.terminal_price_per_kwh * p.p_max_kw * sim.dt_h / p.eta_discharge
    assert bool((grad[:, bat] < 2 * price_only).all())
    before = mult.device[bat].clone()
    dual_update(mult, torch.stack(devs), torch.zeros(sim.n_steps, 2, sim.n_nodes, dtype=sim.dtype), LagrangianConfig())
    assert bool((mult.device[bat] > before).all())


def test_dual_step_decays_with_the_number_of_steps():
    """The k-th dual step (k = 0, 1, ...) is rho / sqrt(1 + k / k_0) on both multiplier groups; k_0 = 0 keeps it
    constant; the step count travels with the multipliers' state."""
    dev = torch.ones(1, 1, 1, dtype=torch.float64)  # 1 unit per day above a zero budget
    w = torch.ones(1, 1, 1, dtype=torch.float64)
    zero_budgets = {"battery_undelivered_kwh_budget": 0.0, "voltage_violation_budget": 0.0}
    for k0, expected in (
        (4.0, [1.0, 1.0 + (1 + 1 / 4) ** -0.5, 1.0 + (1 + 1 / 4) ** -0.5 + (1 + 2 / 4) ** -0.5]),
        (0.0, [1.0, 2.0, 3.0]),
    ):
        config = LagrangianConfig(device_dual_lr=1.0, voltage_dual_lr=1.0, dual_lr_decay_iterations=k0, **zero_budgets)
        mult = Multipliers({"battery": slice(0, 1)}, torch.ones(1), 1, 1)
        for total in expected:
            dual_update(mult, dev, w, config)
            assert float(mult.device[0]) == pytest.approx(total)
            assert float(mult.voltage[0, 0]) == pytest.approx(total)
        assert mult.updates == 3
    restored = Multipliers({"battery": slice(0, 1)}, torch.ones(1), 1, 1)
    restored.load_state_dict(mult.state_dict())
    assert restored.updates == 3


def test_obs_normalizer_matches_batch_statistics():
    x = torch.randn(50, 3, 4, dtype=torch.float64) * 3 + 1
    norm = ObsNormalizer(3, 4, std_min=1e-6)
    norm.update(x[:20])
    norm.update(x[20:])
    torch.testing.assert_close(norm.mean, x.mean(dim=0))
    torch.testing.assert_close(norm.std, x.std(dim=0, unbiased=False))


def test_cli_writes_run_files_and_refuses_non_empty_dir(tmp_path):
    from gridedge_run.cli import main

    out = tmp_path / "run"
    argv = [
        "train",
        "gradma",
        "--feeder",
        "ieee13",
        "--agents",
        "20",
        "--iterations",
        "2",
        "--seed",
        "3",
        "--out",
        str(out),
        "--set",
        "batch_days=2",
        "--set",
        "hidden=8",
        "--json",
    ]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    summary = json.loads(buf.getvalue())
    assert summary["iterations"] == 2 and summary["method"] == "gradma"
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "policies.pt", "multipliers.png"):
        assert (out / name).is_file(), name
    assert (out / "multipliers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {f"final_{name}" for name in MULTIPLIER_FIELDS} <= set(summary)
    info = json.loads((out / "config.json").read_text())
    assert info["seed"] == 3 and info["config"]["reuse"] == 1 and info["sim_config"]["feeder"] == "ieee13"
    assert info["config"]["run"]["seed"] == 3
    assert "torch" in info["versions"] and "gridedge" in info["versions"]
    lines = (out / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3
    for column in (
        "wall_s",
        "lagrangian",
        "cost",
        "violation_share",
        "worst_violation_pu",
        *DEVICE_METRIC_NAMES,
        *MULTIPLIER_FIELDS,
        "pf_failures",
    ):
        assert column in lines[0].split(",")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 2  # refuses the non-empty directory

    # resume to 3 iterations, then evaluate the exported policies
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "gradma", "--iterations", "3", "--out", str(out), "--resume"]) == 0
    assert len((out / "metrics.csv").read_text().splitlines()) == 4
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["evaluate", str(out), "--split", "test", "--days", "2", "--json"]) == 0
    result = json.loads(buf.getvalue())
    for key in EVAL_KEYS:
        assert key in result, key
    assert result["n_agents"] == 20 and result["days"] == 2

    policy, saved = load_policies(out)
    assert saved["iteration"] == 3 and saved["agents"][0] == "battery_0"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert (
            main(
                [
                    "evaluate",
                    "--method",
                    "price-seeking",
                    "--feeder",
                    "ieee13",
                    "--agents",
                    "20",
                    "--days",
                    "2",
                    "--json",
                ]
            )
            == 0
        )
    assert json.loads(buf.getvalue())["method"] == "price-seeking"


#: A small feasible task: light load and little PV, so the rules' violations come from the devices' own
#: schedules, and a coordinated schedule without them exists (the optimum's test in test_baselines.py).
FEASIBLE = dict(feeder="ieee13", n_agents=1000, load_scale=0.5, pv_kwp_per_kw=1.0, source_v_pu=1.0, step_minutes=60)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gradmap_learns_a_feasible_task():
    """About 2 minutes on 2 cores (80 iterations of 4 days, 1,000 agents, 24 steps), 16 evenly spaced test days.
    The assertions keep wide margins: no more than a quarter of the best rule's violation share, and a cost below
    the droop rule's (the rule with the fewest violations) and a quarter below doing nothing's."""
    sim = make_sim(**FEASIBLE)
    make_policy, params, _ = train(sim, gradmap_config(iterations=80, batch_days=4, seed=0))
    learned = evaluate_policy(sim, obs_policy(make_policy(params)), split="test", days=16)
    rules = {
        name: evaluate_policy(sim, RULES[name], split="test", days=16) for name in ("noop", "price-seeking", "droop")
    }
    assert learned["pf_failures"] == 0
    assert learned["violation_share"] <= 0.25 * min(r["violation_share"] for r in rules.values())
    assert learned["cost"] < rules["droop"]["cost"]
    assert learned["cost"] < 0.75 * rules["noop"]["cost"]


def test_docs_example_runs_and_config_table_is_complete():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "gradmap.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/gradmap.md", "exec"), {})

    for name in flatten_config(GradMAPConfig()):
        field = name.rsplit(".", 1)[-1]
        assert f"| `{field}` |" in text, f"{field} missing from the config table in docs/gradmap.md"
