"""Lenient inputs are errors: non-real actions, unknown reset options, rejected seeds, solver tolerances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gridedge_env
from gridedge_env.adapters.gymnasium_env import GridEdgeCentralEnv

CFG = {"feeder": "ieee13", "n_agents": 6}


@pytest.fixture(scope="module")
def par():
    return gridedge_env.parallel_env(**CFG)


@pytest.fixture(scope="module")
def central():
    return GridEdgeCentralEnv(**CFG)


@pytest.mark.parametrize("bad", ["0.5", b"1", np.array(["0.5"]), None, 1 + 2j, np.array([0.5 + 1j]), [0.5 + 0j]])
def test_parallel_env_rejects_non_real_actions_and_keeps_its_state(par, bad):
    obs, _ = par.reset(seed=3)
    actions = dict.fromkeys(par.agents, 0.0)
    actions[par.agents[2]] = bad
    with pytest.raises(ValueError, match=rf"action of agent '{par.agents[2]}' is not numeric \(a real number\)"):
        par.step(actions)
    after, *_ = par.step(dict.fromkeys(par.agents, 0.0))
    fresh = gridedge_env.parallel_env(**CFG)
    fresh.reset(seed=3)
    expected, *_ = fresh.step(dict.fromkeys(fresh.agents, 0.0))
    assert all(np.array_equal(after[a], expected[a]) for a in par.agents)


@pytest.mark.parametrize("bad", [["0.5"] * 6, [None] * 6, np.full(6, 0.5 + 1j)])
def test_central_env_and_core_reject_non_real_actions(central, bad):
    central.reset(seed=0)
    with pytest.raises(ValueError, match=r"must be numeric \(real numbers\)"):
        central.step(bad)
    sim = central.sim
    state = sim.reset(1, seed=0)
    with pytest.raises(ValueError, match=r"must be numeric \(real numbers\)"):
        sim.step(state, [list(bad)])


@pytest.mark.parametrize("options", [{"day": "3"}, {"day": 2.5}, ["day"]])
def test_malformed_reset_options_are_errors(par, central, options):
    with pytest.raises(ValueError, match="reset option"):
        par.reset(seed=0, options=options)
    with pytest.raises(ValueError, match="reset option"):
        central.reset(seed=0, options=options)


def test_unknown_reset_options_are_named_in_a_warning(par, central):
    for env in (par, central):
        with pytest.warns(UserWarning, match=r"reset option\(s\) \['dya'\] are not used; the only option is 'day'"):
            env.reset(seed=0, options={"dya": 3})


@pytest.mark.parametrize("seed", [2**64, -1, 1.5, "3", True])
def test_a_rejected_seed_leaves_the_episode_generator_untouched(seed):
    env, reference = gridedge_env.parallel_env(**CFG), gridedge_env.parallel_env(**CFG)
    env.reset(seed=11)
    reference.reset(seed=11)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
        env.reset(seed=seed)
    obs, _ = env.reset()  # the next unseeded episode is the one after seed 11, as if nothing had happened
    expected, _ = reference.reset()
    assert all(np.array_equal(obs[a], expected[a]) for a in env.agents)

    central, central_ref = GridEdgeCentralEnv(**CFG), GridEdgeCentralEnv(**CFG)
    central.reset(seed=11)
    central_ref.reset(seed=11)
    with pytest.raises(ValueError, match=r"seed must be an integer"):
        central.reset(seed=seed)
    np.testing.assert_array_equal(central.reset()[0], central_ref.reset()[0])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pf_tol", 0.0),
        ("pf_tol", -1e-6),
        ("pf_tol", float("nan")),
        ("pf_tol", "1e-6"),
        ("pf_adjoint_tol", float("inf")),
        ("pf_adjoint_tol", 2.0),
        ("pf_max_iter", 0),
        ("pf_max_iter", 2.5),
        ("pf_max_iter", True),
    ],
)
def test_solver_tolerance_fields_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        gridedge_env.make_sim(**CFG, **{field: value})


def test_valid_solver_settings_still_work():
    sim = gridedge_env.make_sim(**CFG, pf_tol=1e-8, pf_adjoint_tol=1e-8, pf_max_iter=50)
    state = sim.reset(1, seed=0)
    assert bool(sim.step(state, torch.zeros(1, sim.n_agents, dtype=sim.dtype)).converged.all())
