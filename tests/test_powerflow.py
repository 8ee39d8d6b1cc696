"""Power flow: agreement with OpenDSS, physics, implicit gradients, failures and bad input.

Reference numbers come from OpenDSS through OpenDSSDirect.py 0.9.x (DSS C-API), solved in the same test with
tolerance 1e-12, the same fixed regulator taps, controls off and the loads' own voltage limits (see
`gridedge_env.network.opendss.OpenDSSReference`).
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from gridedge_env import powerflow
from gridedge_env.network import load_feeder
from gridedge_env.network.shipped import reference_model
from gridedge_env.powerflow.admittance import element_yprims, node_index
from gridedge_env.powerflow.solve import _fixed_point_map, slot_coefficients
from gridedge_env.validation import draw_operating_points, validate

FEEDERS = ["ieee13", "ieee34", "ieee123"]


@pytest.fixture(scope="module")
def compiled():
    return {name: powerflow.compile(load_feeder(name)) for name in FEEDERS}


def _points(c, n, seed=0):
    return draw_operating_points(c, n, seed).torch(c)


@pytest.mark.parametrize("name", FEEDERS)
def test_agrees_with_reference_opendss_models(name, shared_data):
    result = validate(load_feeder(name), reference=reference_model(name, shared_data), samples=20, seed=1)
    assert result["all_converged"]
    assert result["max_abs_err_pu"] <= 1e-6, result


@pytest.mark.parametrize("name", FEEDERS)
def test_agrees_with_model_written_by_to_opendss(name):
    result = validate(load_feeder(name), samples=10, seed=2)
    assert result["all_converged"]
    assert result["max_abs_err_pu"] <= 1e-6, result


def _opendss_load_power(load, p, q, v):
    """Power of a load at voltage v (pu of its rating), as OpenDSS's Load.pas states it in currents: the
    nominal law inside vminpu..vmaxpu; above, the impedance S / vmaxpu^2 (model 5: S / vmaxpu); between
    vlowpu and vminpu a current magnitude linear from vlowpu (nominal impedance) to vminpu (impedance
    S / vminpu^2; model 5: nominal current); below, the nominal impedance. Model 2 never switches."""
    s = torch.complex(p, q)
    nominal = torch.complex(p * v**load.p_exponent, q * v**load.q_exponent)
    if load.model == 2:
        return nominal
    vmin, vmax, vlow = load.vminpu, load.vmaxpu, load.vlowpu
    current_at_vmin = 1.0 if load.model == 5 else 1.0 / vmin
    current = vlow + (current_at_vmin - vlow) * (v - vlow) / (vmin - vlow)  # pu of S / V_rated
    high = s * v**2 / (vmax if load.model == 5 else vmax**2)
    out = torch.where(v > vmax, high, nominal)
    out = torch.where(v <= vmin, s * v * current, out)
    return torch.where(v <= vlow, s * v**2, out)


@pytest.mark.parametrize("name", FEEDERS)
def test_power_balance_source_equals_loads_plus_losses(name, compiled):
    """Power from the source = power drawn by loads and injections + power absorbed by every element."""
    c = compiled[name]
    pts = _points(c, 8)
    r = powerflow.solve(c, **pts, tol=1e-13, return_source_power=True)
    v = r.v_volts(c)
    index = node_index(c.feeder)
    absorbed = torch.zeros(8, dtype=torch.complex128)
    for elem, yprim, conductors in element_yprims(c.feeder):
        if elem.startswith("Vsource"):
            continue
        cols = [index[cond] if cond[1] else -1 for cond in conductors]
        v_term = torch.stack([v[:, k] if k >= 0 else torch.zeros(8, dtype=v.dtype) for k in cols], dim=1)
        i_term = v_term @ torch.as_tensor(yprim).T
        absorbed += (v_term * i_term.conj()).sum(dim=1) / 1e3
    # loads: recompute each load's power at its own terminal voltage, independently of the solver
    loads = torch.zeros(8, dtype=torch.complex128)
    for li, load in enumerate(c.feeder.loads):
        nodes = load.terminal.nodes
        bus = load.terminal.bus
        if load.conn == "wye":
            pairs = [(nodes[k], nodes[load.phases] if len(nodes) > load.phases else 0) for k in range(load.phases)]
            v_nom = load.kv * 1e3 / (np.sqrt(3) if load.phases > 1 else 1)
        else:
            n = len(nodes)
            pairs = [(nodes[0], nodes[1])] if load.phases == 1 else [(nodes[k], nodes[(k + 1) % n]) for k in range(n)]
            v_nom = load.kv * 1e3
        for a, b in pairs:
            u = v[:, index[(bus, a)]] - (v[:, index[(bus, b)]] if b else 0)
            loads += _opendss_load_power(
                load, pts["load_p_kw"][:, li], pts["load_q_kvar"][:, li], u.abs() / v_nom
            ) / len(pairs)
    loads += torch.complex(pts["injection_p_kw"].sum(1), pts["injection_q_kvar"].sum(1))
    source = torch.complex(r.source_p_kw, r.source_q_kvar)
    mismatch = (source - loads - absorbed).abs()
    assert mismatch.max() <= 1e-6 * source.abs().max(), (source, loads, absorbed)
    assert (absorbed.real > 0).all()  # lines and transformers have losses


def test_source_current_matches_head_element_current(compiled):
    c = compiled["ieee123"]
    r = powerflow.solve(c, **_points(c, 4), return_currents=True)
    v_src = r.v_volts(c)[:, c.source_nodes]
    i_src = (c.source_emf_v - v_src) @ c.source_y_s.T
    head = [c.current_names.index(f"Transformer.reg1a.{k}") for k in (1, 2, 3)]
    assert torch.allclose(r.currents_a[:, head], i_src, rtol=1e-8, atol=1e-6)


def test_gradcheck_injections_to_voltage_magnitudes(compiled):
    c = compiled["ieee13"]
    pts = _points(c, 2, seed=3)
    p_inj = pts["injection_p_kw"].clone().requires_grad_(True)
    q_load = pts["load_q_kvar"].clone().requires_grad_(True)

    def f(p, q):
        return powerflow.solve(c, pts["load_p_kw"], q, p, pts["injection_q_kvar"], tol=1e-14, max_iter=500).v_mag_pu

    assert torch.autograd.gradcheck(f, (p_inj, q_load), eps=1e-4, atol=1e-7, rtol=1e-5)


def test_implicit_gradient_matches_unrolled_autograd(compiled):
    c = compiled["ieee123"]
    pts = _points(c, 4, seed=4)
    weights = torch.randn(4, c.w_active.shape[0], dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    leaves = {k: v.clone().requires_grad_(True) for k, v in pts.items()}
    r = powerflow.solve(c, **leaves, tol=1e-14, max_iter=500, adjoint_tol=1e-14)
    (r.v_active_pu.abs() * weights.real + r.v_active_pu.real * weights.imag).sum().backward()
    implicit = {k: v.grad for k, v in leaves.items()}

    leaves = {k: v.clone().requires_grad_(True) for k, v in pts.items()}
    coef = slot_coefficients(c, **leaves)
    v = c.w_active.expand(4, -1)
    for _ in range(80):  # far past convergence: unrolled autograd through every iteration
        v = _fixed_point_map(c, v, coef)
    (v.abs() * weights.real + v.real * weights.imag).sum().backward()
    for name, g in implicit.items():
        unrolled = leaves[name].grad
        rel = (g - unrolled).abs().max() / unrolled.abs().max()
        assert rel <= 1e-6, (name, float(rel))


def test_adjoint_stops_at_once_when_the_loss_ignores_the_voltages(compiled, monkeypatch):
    """A loss whose gradient w.r.t. the voltages is exactly 0 (a step without voltage violations) has the
    adjoint mu = 0; the adjoint iteration must see that fixed point at its first step instead of running to
    max_iter (before it did, that was half of a GradMAP rollout's time)."""
    c = compiled["ieee123"]
    pts = _points(c, 2, seed=5)
    p_inj = pts["injection_p_kw"].clone().requires_grad_(True)
    r = powerflow.solve(c, pts["load_p_kw"], pts["load_q_kvar"], p_inj, pts["injection_q_kvar"])
    calls = []
    real_addmm = torch.addmm

    def counting_addmm(*args, **kwargs):
        calls.append(1)
        return real_addmm(*args, **kwargs)

    monkeypatch.setattr(torch, "addmm", counting_addmm)  # only the adjoint calls addmm in this backward
    (0.0 * r.v_mag_pu).sum().backward()
    monkeypatch.undo()
    assert 1 <= len(calls) <= 2  # one adjoint step per phase (single, then double precision), not 2 x 200
    assert float(p_inj.grad.abs().max()) == 0.0


def test_non_convergence_is_flagged_and_gradients_stay_finite(compiled):
    # constant-power loads at every voltage (with their limits, loads turn into impedances at low voltage
    # and a solution exists however large they are)
    c = powerflow.compile(load_feeder("ieee13"), load_voltage_limits=False)
    p = c.load_p_kw.expand(3, -1).clone()
    p[1] *= 1000.0  # absurd: no operating point exists
    p = p.requires_grad_(True)
    r = powerflow.solve(c, p, max_iter=60)
    assert r.converged.tolist() == [True, False, True]
    r.v_mag_pu.sum().backward()
    assert torch.isfinite(p.grad).all()
    assert (p.grad[1] == 0).all() and (p.grad[0] != 0).any()
    assert torch.isfinite(r.v_mag_pu[[0, 2]]).all()
    with pytest.raises(powerflow.PowerFlowError, match=r"batch rows \[1\]"):
        powerflow.solve(c, p.detach(), max_iter=60, raise_on_failure=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_failed_rows_are_frozen_and_every_row_equals_its_solve_alone(dtype):
    """Rows that diverge stay at the iterate they failed in: each row's output, flag and gradient are those
    of the same row solved alone, and everything is finite, whatever the other rows do."""
    c = powerflow.compile(load_feeder("ieee13"), dtype=dtype, load_voltage_limits=False)
    tol = 1e-10 if dtype == torch.float64 else 1e-6
    scales = torch.tensor([1.0, 200.0, 0.5, 1000.0, 1.5, 50.0], dtype=dtype)
    p = (c.load_p_kw * scales[:, None]).requires_grad_(True)
    together = powerflow.solve(c, p, tol=tol, max_iter=80)
    assert together.converged.tolist() == [True, False, True, False, True, False]
    (together.v_mag_pu.sum() + together.v_pu.real.sum()).backward()
    for row in range(len(scales)):
        q = p.detach()[row : row + 1].clone().requires_grad_(True)
        alone = powerflow.solve(c, q, tol=tol, max_iter=80)
        (alone.v_mag_pu.sum() + alone.v_pu.real.sum()).backward()
        assert alone.converged[0] == together.converged[row]
        # float32 rounding differs with the batch's shape, which can move a failed row's last step by one
        assert abs(int(alone.iterations[0]) - int(together.iterations[row])) <= (0 if dtype == torch.float64 else 2)
        # float32 rounding differs with the batch's shape (relative to a failed row's large voltages)
        atol, rtol = (1e-12, 1e-9) if dtype == torch.float64 else (1e-5, 1e-5)
        assert torch.allclose(alone.v_pu[0], together.v_pu[row], atol=atol, rtol=rtol)
        assert torch.allclose(q.grad[0], p.grad[row], atol=atol, rtol=1e-4 if dtype == torch.float32 else 1e-6)
    for x in (together.v_pu, together.v_mag_pu, together.v_active_pu, p.grad):
        assert torch.isfinite(torch.view_as_real(x) if x.is_complex() else x).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("start", [0.0, float("nan")])
def test_zero_or_nan_warm_start_gives_finite_outputs_and_gradients(start, dtype):
    c = powerflow.compile(load_feeder("ieee13"), dtype=dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-6
    p = c.load_p_kw.expand(2, -1).clone().requires_grad_(True)
    v_init = c.w_active.expand(2, -1).clone()
    v_init[0] = start
    v_init[1, :3] = start
    r = powerflow.solve(c, p, v_init=v_init, tol=tol)
    assert r.converged.all()
    r.v_mag_pu.sum().backward()
    assert torch.isfinite(p.grad).all() and (p.grad != 0).any()
    cold = powerflow.solve(c, p.detach(), tol=tol)
    assert torch.allclose(r.v_pu, cold.v_pu, atol=1e-9 if dtype == torch.float64 else 1e-5, rtol=0)


def test_batch_rows_are_independent(compiled):
    c = compiled["ieee34"]
    pts = _points(c, 5, seed=5)
    together = powerflow.solve(c, **pts, tol=1e-13).v_pu
    for k in (0, 3):
        alone = powerflow.solve(c, **{n: x[k : k + 1] for n, x in pts.items()}, tol=1e-13).v_pu
        assert torch.allclose(alone[0], together[k], atol=1e-11, rtol=0)


def test_warm_start_same_answer_fewer_iterations(compiled):
    c = compiled["ieee123"]
    pts = _points(c, 6, seed=6)
    cold = powerflow.solve(c, **pts)
    nudged = {k: v * 1.01 for k, v in pts.items()}
    warm = powerflow.solve(c, **nudged, v_init=cold.v_active_pu)
    again = powerflow.solve(c, **nudged)
    assert torch.allclose(warm.v_pu, again.v_pu, atol=1e-9, rtol=0)
    assert warm.iterations.float().mean() < again.iterations.float().mean()


def test_float32_is_accurate_to_1e5_pu():
    feeder = load_feeder("ieee123")
    c64 = powerflow.compile(feeder)
    c32 = powerflow.compile(feeder, dtype=torch.float32)
    pts = _points(c64, 16, seed=7)
    v64 = powerflow.solve(c64, **pts).v_pu
    r32 = powerflow.solve(c32, **{k: v.float() for k, v in pts.items()}, tol=1e-6)
    assert r32.converged.all()
    assert (r32.v_pu.to(torch.complex128) - v64).abs().max() < 1e-5


def test_memory_does_not_grow_with_iterations(compiled):
    """The autograd graph holds one fixed-point node, however many iterations the forward took."""
    c = compiled["ieee13"]
    p = c.load_p_kw.clone().requires_grad_(True)
    r = powerflow.solve(c, p, tol=1e-14, max_iter=500)
    assert r.iterations.item() > 10
    node = r.v_active_pu.grad_fn
    assert type(node).__name__.startswith("_ImplicitFixedPoint")
    assert len(node.next_functions) <= 7  # inputs of the one custom node, not one node per iteration


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"load_p_kw": torch.ones(2, 3)}, r"load_p_kw must have shape"),
        ({"injection_p_kw": torch.full((19,), float("nan"))}, r"injection_p_kw contains NaN"),
        ({"load_p_kw": torch.ones(2, 15), "load_q_kvar": torch.ones(3, 15)}, r"disagree on the batch size"),
        ({"v_init": torch.ones(1, 5, dtype=torch.complex128)}, r"v_init must have shape"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(compiled, kwargs, message):
    c = compiled["ieee13"]
    assert c.n_loads == 15 and c.n_injections == 19
    with pytest.raises(ValueError, match=message):
        powerflow.solve(c, **kwargs)


def test_compile_rejects_unknown_injection_node():
    with pytest.raises(ValueError, match="no nodes"):
        powerflow.compile(load_feeder("ieee13"), injection_nodes=["nosuchbus.1"])


LIMITS_MODEL = """
Clear
New Circuit.limits basekv=12.47 pu=1.07 phases=3 bus1=src r1=0.01 x1=0.05 r0=0.01 x0=0.05
New Line.l1 phases=3 bus1=src bus2=a length=1 units=km r1=0.3 x1=0.6 r0=0.6 x0=1.5 c1=10 c0=5
New Line.l2 phases=3 bus1=a bus2=b length=4 units=km r1=0.3 x1=0.6 r0=0.6 x0=1.5 c1=10 c0=5
New Load.m1 bus1=b.1 phases=1 kv=7.2 kw=900 kvar=300 model=1 vminpu=0.97 vlowpu=0.93
New Load.m2 bus1=b.2 phases=1 kv=7.2 kw=900 kvar=300 model=2
New Load.m3 bus1=b.3 phases=1 kv=7.2 kw=900 kvar=300 model=3 vminpu=0.9 vlowpu=0.7
New Load.m5 bus1=a.1 phases=1 kv=7.2 kw=300 kvar=100 model=5 vmaxpu=1.02
New Load.m4 bus1=a.2 phases=1 kv=7.2 kw=300 kvar=100 model=4 cvrwatts=1 cvrvars=2 vmaxpu=1.03
New Load.d1 bus1=b.1.2 phases=1 conn=delta kv=12.47 kw=500 kvar=100 model=1 vlowpu=0.8 vminpu=0.9
New Load.w3 bus1=a.3 phases=1 kv=7.2 kw=200 kvar=50 model=1 vmaxpu=1.0
New Load.m1b bus1=b.1 phases=1 kv=7.2 kw=200 kvar=60 model=5 vminpu=0.9 vlowpu=0.6
Set VoltageBases=[12.47]
CalcVoltageBases
"""


@pytest.fixture(scope="module")
def limits_model(tmp_path_factory):
    from gridedge_env.network import from_opendss

    path = tmp_path_factory.mktemp("limits") / "limits.dss"
    path.write_text(LIMITS_MODEL)
    return from_opendss(path), path


def test_load_voltage_limits_match_opendss_in_every_region(limits_model):
    """Models 1-5 above vmaxpu, inside, between vlowpu and vminpu and below vlowpu agree with OpenDSS's own
    (unwidened) limits to 1e-9 pu, also where two loads of one node switch at different voltages."""
    from gridedge_env.network.opendss import OpenDSSReference

    feeder, path = limits_model
    assert {ld.name: (ld.vminpu, ld.vmaxpu, ld.vlowpu) for ld in feeder.loads}["m3"] == (0.9, 1.05, 0.7)
    c = powerflow.compile(feeder)
    assert c.n_slots == c.w_active.shape[0] + 2  # the delta load, and m1b beside m1 on node b.1
    scales = np.array([0.05, 0.5, 1.0, 2.0, 3.0, 4.0])
    p, q = np.outer(scales, c.load_p_kw.numpy()), np.outer(scales, c.load_q_kvar.numpy())
    r = powerflow.solve(c, torch.tensor(p), torch.tensor(q), tol=1e-12, max_iter=500)
    assert r.converged.all()
    ref = OpenDSSReference(feeder, path, c.injection_node_names, tolerance=1e-12)
    zero = np.zeros(c.n_injections)
    v = r.v_volts(c).numpy()
    index = {name: i for i, name in enumerate(c.node_names)}
    regions = set()
    for k in range(len(scales)):
        v_ref, converged = ref.solve(p[k], q[k], zero, zero)
        assert converged
        assert np.max(np.abs(v[k] - v_ref) / c.v_base_v.numpy()) < 1e-9
        for ld in feeder.loads:
            if ld.model == 2 or ld.conn == "delta":
                continue
            u = abs(v[k][index[f"{ld.terminal.bus}.{ld.terminal.nodes[0]}"]]) / (ld.kv * 1e3)
            regions.add(
                "low" if u <= ld.vlowpu else "interp" if u <= ld.vminpu else "high" if u > ld.vmaxpu else "inside"
            )
    assert regions == {"low", "interp", "high", "inside"}


def test_load_voltage_limits_gradient_is_exact_away_from_switching(limits_model):
    feeder, _ = limits_model
    c = powerflow.compile(feeder)
    scales = torch.tensor([[0.05], [1.0], [3.0], [4.0]], dtype=torch.float64)

    def f(p, q):
        return powerflow.solve(c, p, q, tol=1e-13, max_iter=500).v_mag_pu

    p = (c.load_p_kw * scales).requires_grad_(True)
    q = (c.load_q_kvar * scales).requires_grad_(True)
    assert torch.autograd.gradcheck(f, (p, q), eps=1e-4, atol=1e-7, rtol=1e-5)


def test_loads_keep_their_law_when_limits_are_off(limits_model):
    feeder, _ = limits_model
    on, off = powerflow.compile(feeder), powerflow.compile(feeder, load_voltage_limits=False)
    nominal = feeder.replace(
        loads=tuple(dataclasses.replace(ld, vminpu=0.0, vlowpu=0.0, vmaxpu=1e9) for ld in feeder.loads)
    )
    wide = powerflow.compile(nominal)
    p, q = off.load_p_kw * 3.0, off.load_q_kvar * 3.0
    v_off, v_wide, v_on = (powerflow.solve(x, p, q, tol=1e-13).v_pu for x in (off, wide, on))
    assert torch.allclose(v_off, v_wide, atol=1e-12, rtol=0)
    assert (v_off - v_on).abs().max() > 1e-3


# ----- every public OpenDSS feeder under ../shared/data, as the user would validate it ---------------------
PUBLIC_MODELS = {
    "4bus-yd-bal": ("4bus-yd-bal/4Bus-YD-Bal.DSS", 20),
    "4bus-oyod-bal": ("4bus-oyod-bal/4Bus-OYOD-Bal.DSS", 20),
    "ieee8500": ("ieee8500/Master.dss", 4),
}


def test_every_public_feeder_has_a_correspondence_test(shared_data):
    from gridedge_env.network.shipped import SHIPPED_FEEDERS

    folders = {p.name for p in shared_data.iterdir() if p.is_dir() and any(p.glob("*.[dD][sS][sS]"))}
    covered = {Path(v.master).parts[0] for v in SHIPPED_FEEDERS.values()} | {
        Path(v[0]).parts[0] for v in PUBLIC_MODELS.values()
    }
    assert folders <= covered, folders - covered


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "ieee8500" else n for n in PUBLIC_MODELS]
)
def test_public_feeder_agrees_with_its_unmodified_opendss_model(name, shared_data):
    """The user's check: `gridedge validate --feeder M --reference M` on the model as published (its own
    load limits, controls off), every row compared."""
    from gridedge_env.network import from_opendss

    master, samples = PUBLIC_MODELS[name]
    path = shared_data / master
    result = validate(from_opendss(path), reference=path, samples=samples, seed=1)
    assert result["all_converged"] and result["both_converged"] == samples, result
    assert result["max_abs_err_pu"] <= 1e-6, result


@pytest.mark.parametrize("master", ["4bus-yd-bal/4Bus-YD-Bal.DSS", "4bus-oyod-bal/4Bus-OYOD-Bal.DSS"])
def test_heavy_transformer_cases_converge_wherever_opendss_does(master, shared_data):
    """The 4-node cases at 0.25-2.5 times their loads: every load OpenDSS solves, gridedge solves too (the
    fixed point, then Newton on rows that stall or diverge) and agrees to 1e-8 pu."""
    from gridedge_env.network import from_opendss
    from gridedge_env.network.opendss import OpenDSSReference

    path = shared_data / master
    feeder = from_opendss(path)
    c = powerflow.compile(feeder)
    scales = np.array([0.25, 0.5, 1.0, 1.4, 1.8, 2.0, 2.2, 2.5])
    p, q = np.outer(scales, c.load_p_kw.numpy()), np.outer(scales, c.load_q_kvar.numpy())
    r = powerflow.solve(c, torch.tensor(p), torch.tensor(q), tol=1e-10, max_iter=500)
    ref = OpenDSSReference(feeder, path, c.injection_node_names, tolerance=1e-10)
    zero = np.zeros(c.n_injections)
    solved_by_opendss = 0
    for k in range(len(scales)):
        v_ref, converged = ref.solve(p[k], q[k], zero, zero)
        if converged:
            solved_by_opendss += 1
            assert r.converged[k], scales[k]
            assert np.max(np.abs(r.v_volts(c)[k].numpy() - v_ref) / c.v_base_v.numpy()) < 1e-8
    assert solved_by_opendss >= 5 and bool(r.converged[-1])  # and beyond, where OpenDSS stops


def test_newton_rows_have_the_same_implicit_gradient(limits_model):
    """A row near the nose (constant power, 3.6 times the loads) where the fixed point stalls is solved by
    Newton; its gradient (a direct adjoint solve) matches finite differences, beside a row the fixed point
    solves."""
    feeder, _ = limits_model
    c = powerflow.compile(feeder, load_voltage_limits=False)
    scales = torch.tensor([[1.0], [3.6]], dtype=torch.float64)
    plain = powerflow.solve(c, c.load_p_kw * scales, c.load_q_kvar * scales, tol=1e-12, max_iter=40, fallback=False)
    assert plain.converged.tolist() == [True, False]

    def f(p, q):
        return powerflow.solve(c, p, q, tol=1e-13, max_iter=40).v_mag_pu

    p = (c.load_p_kw * scales).requires_grad_(True)
    q = (c.load_q_kvar * scales).requires_grad_(True)
    r = powerflow.solve(c, p, q, tol=1e-13, max_iter=40)
    assert r.converged.all() and r.iterations[1] > 40
    assert torch.autograd.gradcheck(f, (p, q), eps=1e-4, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", ["ieee13", "ieee123"])
def test_sparse_factor_path_equals_dense_path(name, monkeypatch):
    """Feeders over DENSE_RECOVERY_NODES iterate (forward and adjoint) and recover through Y's sparse LU
    factors instead of the dense Z: the same voltages, iterations and input gradients, here forced on a small
    feeder, including a Newton row (3.6 times the loads), whose steps and direct adjoint solve sparse systems
    over all nodes, never forming Z_TT."""
    compile_module = importlib.import_module("gridedge_env.powerflow.compile")
    feeder = load_feeder(name)
    dense = powerflow.compile(feeder)
    monkeypatch.setattr(compile_module, "DENSE_RECOVERY_NODES", 0)
    sparse = powerflow.compile(feeder)
    assert dense.recovery is None and sparse.recovery is not None and sparse.z_active is None
    x = _points(dense, 6, seed=3)
    x["load_p_kw"][-1] = dense.load_p_kw * 3.6
    x["load_q_kvar"][-1] = dense.load_q_kvar * 3.6
    weights = torch.randn(6, len(dense.node_names), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results, grads = [], []
    for c in (dense, sparse):
        leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
        r = powerflow.solve(c, **leaves, tol=1e-12, max_iter=40)
        (r.v_mag_pu * weights).sum().backward()
        results.append(r)
        grads.append(torch.cat([leaves[k].grad for k in sorted(leaves)], dim=1))
    assert torch.equal(results[0].iterations, results[1].iterations) and bool(results[1].converged.all())
    assert results[1].iterations[-1] > 40 and "z_active_dense" not in vars(sparse)  # Newton, without Z_TT
    # the two agree to the linear algebra's own accuracy (eps cond(Y) |i|: IEEE-13 and -123 are ill-conditioned)
    assert torch.allclose(results[0].v_pu, results[1].v_pu, atol=5e-10, rtol=0)
    assert torch.allclose(grads[0], grads[1], rtol=1e-8, atol=1e-10 * float(grads[0].abs().max()))
