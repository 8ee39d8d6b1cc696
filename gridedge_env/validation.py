"""Cross-checks of gridedge's power flow against OpenDSS, and the benchmarks that report speed ratios.

Used by `gridedge validate` and `gridedge bench` and by the tests. Every number reported is measured in the
same run as its reference (OpenDSS solving the same operating points through OpenDSSDirect.py).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gridedge_env import powerflow
from gridedge_env.network import Feeder, FeederError, from_opendss, load_feeder
from gridedge_env.network.opendss import OpenDSSReference

# operating points: row 0 is the feeder's own loads; the others scale each load independently in this range
# (narrowed on feeders that cannot carry 1.6 times their loads, see `stress_limit`) ...
LOAD_SCALE_RANGE = (0.2, 1.6)
# ... plus single-phase injections at this share of the injection nodes, each up to this many times the
# node's own wye-to-ground load (see `_node_loads_kw`), either sign, with a reactive part of up to this
# ratio of the real part
INJECTION_NODE_SHARE = 0.2
INJECTION_SIZE_OF_NODE_LOAD = 1.0
INJECTION_Q_OVER_P = 0.3
# OpenDSS and gridedge both solve to this tolerance when their voltages are compared (tighter leaves
# feeders with a floating neutral or delta, such as the 4-node wye-delta case, at rounding noise in both)
TIGHT_TOLERANCE = 1e-10
# the load multiples `stress_limit` tries, and the share of the largest one solved that the draws may reach
_STRESS_GRID = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 4.0)
_STRESS_MARGIN = 0.8
_STRESS_NEWTON_NODES = 500


@dataclass(frozen=True)
class OperatingPoints:
    """N operating points: [N, n_loads] load powers and [N, n_injections] injections (kW, kvar)."""

    load_p_kw: np.ndarray
    load_q_kvar: np.ndarray
    injection_p_kw: np.ndarray
    injection_q_kvar: np.ndarray

    def __len__(self) -> int:
        return len(self.load_p_kw)

    def torch(self, compiled: powerflow.CompiledFeeder) -> dict[str, torch.Tensor]:
        as_t = lambda a: torch.as_tensor(a, dtype=compiled.dtype, device=compiled.device)  # noqa: E731
        return {
            "load_p_kw": as_t(self.load_p_kw),
            "load_q_kvar": as_t(self.load_q_kvar),
            "injection_p_kw": as_t(self.injection_p_kw),
            "injection_q_kvar": as_t(self.injection_q_kvar),
        }


def stress_limit(compiled: powerflow.CompiledFeeder) -> float:
    """The largest multiple of the feeder's own loads (on a grid up to 4) that the power flow still solves:
    a bound on where power flows of this feeder have solutions. Newton's fallback is used where it is cheap
    (up to _STRESS_NEWTON_NODES active nodes); on larger feeders the plain fixed point decides."""
    scales = torch.tensor(_STRESS_GRID, dtype=compiled.dtype, device=compiled.device).unsqueeze(1)
    result = powerflow.solve(
        compiled,
        compiled.load_p_kw * scales,
        compiled.load_q_kvar * scales,
        tol=1e-8,
        max_iter=300,
        fallback=compiled.w_active.shape[0] <= _STRESS_NEWTON_NODES,
    )
    solved = [s for s, ok in zip(_STRESS_GRID, result.converged.tolist(), strict=True) if ok]
    return max(solved, default=_STRESS_GRID[0])


def draw_operating_points(
    compiled: powerflow.CompiledFeeder, samples: int, seed: int, stress: float | None = None
) -> OperatingPoints:
    """Operating points: row 0 the feeder's own loads, no injections; the others each load scaled in
    LOAD_SCALE_RANGE and random injections of either sign sized to their node's load, both scaled down by
    `stress` / LOAD_SCALE_RANGE[1] on feeders whose `stress_limit` times _STRESS_MARGIN (`stress`) is lower."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    rng = np.random.default_rng(seed)
    p0, q0 = compiled.load_p_kw.cpu().numpy(), compiled.load_q_kvar.cpu().numpy()
    factor = 1.0 if stress is None else min(1.0, stress / LOAD_SCALE_RANGE[1])
    low, high = LOAD_SCALE_RANGE
    scale = rng.uniform(low * factor, high * factor, size=(samples, len(p0)))
    scale[0] = 1.0
    n_inj = compiled.n_injections
    size_kw = INJECTION_SIZE_OF_NODE_LOAD * factor * _node_loads_kw(compiled)
    chosen = rng.random((samples, n_inj)) < INJECTION_NODE_SHARE
    chosen[0] = False
    p_inj = np.where(chosen, rng.uniform(-1.0, 1.0, (samples, n_inj)) * size_kw, 0.0)
    q_inj = p_inj * rng.uniform(-INJECTION_Q_OVER_P, INJECTION_Q_OVER_P, (samples, n_inj))
    return OperatingPoints(p0 * scale, q0 * scale, p_inj, q_inj)


def _node_loads_kw(compiled: powerflow.CompiledFeeder) -> np.ndarray:
    """[j] nominal kW of the wye-to-ground loads at each injection node (a load's kW shared equally by its
    phases). A node with only delta or floating-neutral loads gets 0: an injection to ground there has no
    return path but the lines' capacitance, and no solution. An injection node without loads gets the mean
    of the loaded nodes'."""
    names = compiled.injection_node_names
    position = {name: k for k, name in enumerate(names)}
    out = np.zeros(len(names))
    loaded = np.zeros(len(names), dtype=bool)
    for load in compiled.feeder.loads:
        nodes = [f"{load.terminal.bus}.{n}" for n in load.terminal.nodes if n]
        loaded[[position[name] for name in nodes if name in position]] = True
        grounded = load.conn == "wye" and (
            len(load.terminal.nodes) <= load.phases or load.terminal.nodes[load.phases] == 0
        )
        if grounded:
            phases = [name for name in nodes[: load.phases] if name in position]
            for name in phases:
                out[position[name]] += abs(load.p_kw) / len(phases)
    mean = out[out > 0].mean() if (out > 0).any() else 0.0
    return np.where(loaded, out, mean)


def resolve_feeder(name_or_path: str) -> tuple[Feeder, Path | None]:
    """A shipped feeder by name, or an OpenDSS model imported on the fly (returns its path too)."""
    if name_or_path.lower().endswith(".dss"):
        path = Path(name_or_path)
        return from_opendss(path), path
    if name_or_path.lower().endswith(".json"):
        return Feeder.load(name_or_path), None
    return load_feeder(name_or_path), None


class _WrittenModel:
    """The reference model to compare with: the given file, or a temporary one written by `to_opendss`."""

    def __init__(self, feeder: Feeder, reference: str | Path | None):
        self._tmp = None
        if reference is not None:
            self.path = Path(reference)
            if not self.path.is_file():
                raise FeederError(f"{reference}: no such OpenDSS file")
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="gridedge-")
            self.path = feeder.to_opendss(Path(self._tmp.name) / f"{feeder.name}.dss")

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def validate(
    feeder: Feeder, reference: str | Path | None = None, samples: int = 200, seed: int = 0, progress=None
) -> dict:
    """Solve operating points with gridedge and OpenDSS; report the voltage differences.

    Row 0 is the feeder's own loads; the others are drawn by `draw_operating_points`, scaled to what the
    feeder can carry. Both solvers work to TIGHT_TOLERANCE on the same model, loads keeping their voltage
    limits.

    Args:
        feeder: the feeder to check.
        reference: an OpenDSS model of the same feeder (same element and bus names); default: the model
            `feeder.to_opendss` writes.
        samples: number of operating points (the first is the feeder's own loads).
        seed: seed of the operating points.
        progress: optional callable(done, total) for long runs.

    Returns:
        A JSON-ready dict: `max_abs_err_pu` (largest |V_gridedge - V_opendss| over all nodes, in pu of the
        node's base voltage) and `mean_abs_err_pu` over the rows both solvers converged on
        (`both_converged`, None when there are none), `base_case_err_pu` (row 0), the counts of rows only one
        of them converged on (`only_gridedge_converged`, `only_opendss_converged`) and on neither, and
        `all_converged` (every row compared).
    """
    compiled = powerflow.compile(feeder)
    stress = stress_limit(compiled) * _STRESS_MARGIN
    points = draw_operating_points(compiled, samples, seed, stress=stress)
    result = powerflow.solve(compiled, **points.torch(compiled), tol=TIGHT_TOLERANCE, max_iter=500)
    v_ours = result.v_volts(compiled).cpu().numpy()
    base = compiled.v_base_v.cpu().numpy()
    with _WrittenModel(feeder, reference) as model_path:
        ref = OpenDSSReference(feeder, model_path, compiled.injection_node_names, tolerance=TIGHT_TOLERANCE)
        errors = np.zeros(samples)
        ref_converged = np.zeros(samples, dtype=bool)
        for k in range(samples):
            v_ref, ref_converged[k] = ref.solve(
                points.load_p_kw[k], points.load_q_kvar[k], points.injection_p_kw[k], points.injection_q_kvar[k]
            )
            errors[k] = np.max(np.abs(v_ours[k] - v_ref) / base)
            if progress is not None:
                progress(k + 1, samples)
    ours_converged = result.converged.cpu().numpy()
    both = ours_converged & ref_converged
    compared = errors[both]
    return {
        "feeder": feeder.name,
        "reference": str(reference) if reference is not None else "written by Feeder.to_opendss",
        "samples": samples,
        "seed": seed,
        "max_abs_err_pu": float(compared.max()) if compared.size else None,
        "mean_abs_err_pu": float(compared.mean()) if compared.size else None,
        "base_case_err_pu": float(errors[0]) if both[0] else None,
        "all_converged": bool(both.all()),
        "both_converged": int(both.sum()),
        "only_gridedge_converged": int((ours_converged & ~ref_converged).sum()),
        "only_opendss_converged": int((~ours_converged & ref_converged).sum()),
        "neither_converged": int((~ours_converged & ~ref_converged).sum()),
        "gridedge_max_iterations": int(result.iterations.max()),
        "load_scale_range": [
            LOAD_SCALE_RANGE[0] * min(1.0, stress / LOAD_SCALE_RANGE[1]),
            LOAD_SCALE_RANGE[1] * min(1.0, stress / LOAD_SCALE_RANGE[1]),
        ],
        "v_min_pu": float(result.v_mag_pu[result.converged].min()) if bool(result.converged.any()) else None,
        "v_max_pu": float(result.v_mag_pu[result.converged].max()) if bool(result.converged.any()) else None,
        "tolerance_pu": TIGHT_TOLERANCE,
        "nodes": len(compiled.node_names),
    }


def _time(fn, min_seconds: float = 1.0, min_repeats: int = 3, clock=time.perf_counter) -> float:
    """Seconds (of `clock`) per call of fn, averaged over at least min_repeats calls and min_seconds."""
    fn()  # warm-up
    n, start = 0, clock()
    while n < min_repeats or clock() - start < min_seconds:
        fn()
        n += 1
    return (clock() - start) / n


def bench_powerflow(
    feeder: Feeder,
    batch: int = 1024,
    seed: int = 0,
    opendss_points: int = 300,
    tol: float = 1e-10,
    opendss_tol: float = 1e-8,
    device: str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> dict:
    """gridedge batched solves per second against OpenDSS solving the same points, one at a time, and the
    time of a batch's forward solve and of its backward (gradient of the summed voltage magnitudes w.r.t.
    every input).

    OpenDSS is driven from Python as a user would: set every load and injection, solve, read all node
    voltages. It solves the first `opendss_points` operating points (its rate does not depend on the
    batch) at tolerance `opendss_tol` (1e-8: as accurate as gridedge's answer, which OpenDSS's default 1e-4
    is not); the accuracy is gridedge's largest voltage difference to OpenDSS on those points.
    """
    compiled = powerflow.compile(feeder, dtype=dtype, device=device)
    points = draw_operating_points(compiled, batch, seed)
    inputs = points.torch(compiled)

    def run():
        r = powerflow.solve(compiled, **inputs, tol=tol)
        if compiled.device.type == "cuda":
            torch.cuda.synchronize()
        return r

    result = run()
    t_torch = _time(run)

    def run_backward():
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        powerflow.solve(compiled, **leaves, tol=tol).v_mag_pu.sum().backward()
        if compiled.device.type == "cuda":
            torch.cuda.synchronize()

    t_forward_backward = _time(run_backward)
    n_ref = min(opendss_points, batch)
    with _WrittenModel(feeder, None) as model_path:
        ref = OpenDSSReference(feeder, model_path, compiled.injection_node_names, tolerance=opendss_tol)
        v_ours = result.v_volts(compiled).cpu().numpy()
        base = compiled.v_base_v.cpu().numpy()
        err = 0.0
        start = time.perf_counter()
        for k in range(n_ref):
            v_ref, _ = ref.solve(
                points.load_p_kw[k], points.load_q_kvar[k], points.injection_p_kw[k], points.injection_q_kvar[k]
            )
            err = max(err, float(np.max(np.abs(v_ours[k] - v_ref) / base)))
        t_ref = (time.perf_counter() - start) / n_ref
        timeseries = _opendss_timeseries_rate(ref, points, n_ref)
    torch_rate = batch / t_torch
    out = {
        "feeder": feeder.name,
        "batch": batch,
        "device": str(compiled.device),
        "dtype": str(dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "tolerance_pu": tol,
        "opendss_tolerance": opendss_tol,
        "forward_s": t_torch,
        "backward_s": t_forward_backward - t_torch,
        "torch_solves_per_s": torch_rate,
        "opendss_solves_per_s": 1.0 / t_ref,
        "speedup": torch_rate * t_ref,
        "max_abs_err_pu": err,
        "accuracy_points": n_ref,
        "all_converged": bool(result.converged.all()),
        "mean_iterations": float(result.iterations.double().mean()),
    }
    if timeseries is not None:
        out["opendss_timeseries_solves_per_s"] = timeseries
        out["speedup_vs_timeseries"] = torch_rate / timeseries
    return out


def _opendss_timeseries_rate(ref: OpenDSSReference, points: OperatingPoints, n: int) -> float | None:
    """OpenDSS's own time-series mode: one load shape per load, `n` steps solved in one `Solve`.

    No voltages are read back (that would need monitors on every bus), so this is an upper bound on
    OpenDSS's throughput for the same operating points.
    """
    import opendssdirect as dss

    try:
        kw = np.concatenate([points.load_p_kw[:n], points.injection_p_kw[:n]], axis=1)
        kvar = np.concatenate([points.load_q_kvar[:n], points.injection_q_kvar[:n]], axis=1)
        for j, name in enumerate(ref.load_names):
            mult = " ".join(repr(float(x)) for x in kw[:, j])
            qmult = " ".join(repr(float(x)) for x in kvar[:, j])
            dss.Text.Command(f"New LoadShape.gx_{j} npts={n} interval=1 mult=({mult}) qmult=({qmult})")
            dss.Text.Command(f"Load.{name}.kw=1 kvar=1 yearly=gx_{j}")
        dss.Text.Command(f"Set mode=yearly stepsize=1h number={n}")
        start = time.perf_counter()
        dss.Text.Command("Solve")
        return n / (time.perf_counter() - start)
    except Exception:  # optional comparison; OpenDSS versions differ in what they accept
        return None


def bench_gradient(
    feeder: Feeder, batch: int = 256, seed: int = 0, fd_checks: int = 8, fd_step_kw: float = 1e-3, device: str = "cpu"
) -> dict:
    """Forward and backward time of a batched solve, and the implicit gradient against finite differences.

    The loss is a fixed random weighting of all voltage magnitudes; its gradient w.r.t. load and injection
    powers is checked by central differences on `fd_checks` sampled inputs.
    """
    compiled = powerflow.compile(feeder, device=device)
    points = draw_operating_points(compiled, batch, seed)
    inputs = points.torch(compiled)
    weights = torch.randn(
        batch, len(compiled.node_names), generator=torch.Generator().manual_seed(seed), dtype=compiled.dtype
    ).to(device)

    def forward(tol=1e-10):
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        r = powerflow.solve(compiled, **leaves, tol=tol)
        return (r.v_mag_pu * weights).sum(), leaves

    # forward and backward timed separately on the same calls, repeated for at least a second
    forward()[0].backward()  # warm-up
    t_fwd = t_bwd = 0.0
    n = 0
    while n < 3 or t_fwd + t_bwd < 1.0:
        start = time.perf_counter()
        loss, _ = forward()
        middle = time.perf_counter()
        loss.backward()
        t_fwd += middle - start
        t_bwd += time.perf_counter() - middle
        n += 1
    t_fwd, t_bwd = t_fwd / n, t_bwd / n

    loss, leaves = forward(tol=1e-12)
    loss.backward()
    rng = np.random.default_rng(seed + 1)
    worst = 0.0
    checks = []
    for _ in range(fd_checks):
        name = rng.choice(["load_p_kw", "load_q_kvar", "injection_p_kw", "injection_q_kvar"])
        row = int(rng.integers(batch))
        col = int(rng.integers(inputs[name].shape[1]))
        values = []
        for sign in (1.0, -1.0):
            x = {k: v[row : row + 1].clone() for k, v in inputs.items()}
            x[name][0, col] += sign * fd_step_kw
            # as tight as the rounding allows: 1e-14 where the iteration reaches it, else its floor after 500
            # iterations (IEEE-8500: about 1e-13), without Newton's fallback (which cannot go lower)
            r = powerflow.solve(compiled, **x, tol=1e-14, max_iter=500, fallback=False)
            values.append(float((r.v_mag_pu[0] * weights[row]).sum()))
        fd = (values[0] - values[1]) / (2 * fd_step_kw)
        implicit = float(leaves[name].grad[row, col])
        rel = abs(implicit - fd) / max(abs(fd), 1e-12)
        worst = max(worst, rel)
        checks.append({"input": f"{name}[{row},{col}]", "implicit": implicit, "finite_difference": fd, "rel_err": rel})
    return {
        "feeder": feeder.name,
        "batch": batch,
        "device": str(compiled.device),
        "torch_threads": torch.get_num_threads(),
        "forward_s": t_fwd,
        "backward_s": t_bwd,
        "backward_over_forward": t_bwd / t_fwd,
        "max_rel_err_fd": worst,
        "fd_step_kw": fd_step_kw,
        "fd_checks": checks,
        "cpu_count": os.cpu_count(),
    }


def bench_scaling(feeders: list[str], batch: int = 32, seed: int = 0, threads: int = 1) -> dict:
    """Memory and time of the power flow against the feeder's size: one row per feeder, each measured in a
    fresh process (so that its peak memory is its own).

    Per feeder: nodes n, active (loaded) nodes m, nonzeros of Y's sparse LU factors, the compiled tensors'
    size (dominated by the dense m x m Z_TT), the size a dense complex n x n Z would have, compile CPU
    seconds, and, on `batch` operating points from `draw_operating_points`, CPU seconds per operating point of
    the forward solve and of the backward (gradient of the summed voltage magnitudes w.r.t. every input),
    the mean fixed-point iterations, and the process's peak resident memory above what it held after its
    imports (Linux `ru_maxrss`). CPU seconds with `threads` intra-op threads: the steadier measure on a shared
    machine.
    """
    context = multiprocessing.get_context("spawn")
    rows = []
    for name in feeders:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            rows.append(pool.submit(_scaling_row, name, batch, seed, threads).result())
    return {"batch": batch, "threads": threads, "cpu_count": os.cpu_count(), "torch": torch.__version__, "rows": rows}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _scaling_row(name: str, batch: int, seed: int, threads: int) -> dict:
    """One row of `bench_scaling`, in the process that calls it."""
    torch.set_num_threads(threads)
    feeder, _ = resolve_feeder(name)
    rss_start = _peak_rss_mb()
    start = time.process_time()
    compiled = powerflow.compile(feeder)
    compile_s = time.process_time() - start
    rss_compiled = _peak_rss_mb()
    inputs = draw_operating_points(compiled, batch, seed).torch(compiled)

    def forward():
        return powerflow.solve(compiled, **inputs)

    def forward_backward():
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        powerflow.solve(compiled, **leaves).v_mag_pu.sum().backward()

    result = forward()
    t_forward = _time(forward, min_seconds=2.0, min_repeats=1, clock=time.process_time)
    t_both = _time(forward_backward, min_seconds=2.0, min_repeats=1, clock=time.process_time)
    n, m = len(compiled.node_names), compiled.w_active.shape[0]
    tensor_bytes = sum(
        getattr(compiled, f).nbytes
        for f in compiled.__dataclass_fields__
        if isinstance(getattr(compiled, f), torch.Tensor)
    )
    return {
        "feeder": feeder.name,
        "nodes": n,
        "loads": compiled.n_loads,
        "active_nodes": m,
        "factor_nnz": compiled.factor_nnz,
        "compiled_tensors_mb": tensor_bytes / 2**20,
        "dense_z_mb": n * n * 16 / 2**20,
        "compile_cpu_s": compile_s,
        "forward_cpu_ms_per_point": 1e3 * t_forward / batch,
        "backward_cpu_ms_per_point": 1e3 * (t_both - t_forward) / batch,
        "mean_iterations": float(result.iterations.double().mean()),
        "all_converged": bool(result.converged.all()),
        "compile_peak_mb": rss_compiled - rss_start,
        "peak_mb": _peak_rss_mb() - rss_start,
    }
