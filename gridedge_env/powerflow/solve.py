"""Batched three-phase power flow with an implicit-differentiation gradient.

Forward: the Z-bus fixed point `v = T(v, s) = w + Z i(v, s)` on the active nodes (see `compile`), run
without an autograd tape. Backward: at the solution `v* = T(v*, s)` the implicit function theorem gives
`dL/ds = (dT/ds)^T lam` with the adjoint `lam = g + (dT/dv)^T lam`, a fixed point with the same contraction
as the forward map; it is solved with vector-Jacobian products of T (torch.func.vjp), so memory does not
grow with the iteration count and nothing is backpropagated through the iterations.

Rows that do not converge (or diverge) are frozen, flagged `converged=False`, and get zero gradient: no
NaN reaches a gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import vjp

from gridedge_env.powerflow.compile import CompiledFeeder

# a row whose voltages leave this band is diverging: it is frozen and reported as not converged
_DIVERGED_V_PU = (1e-3, 10.0)


class PowerFlowError(RuntimeError):
    """Raised by `solve(..., raise_on_failure=True)` when some rows do not converge."""


@dataclass(frozen=True)
class PowerFlowResult:
    """Solution of a batch of B operating points on a feeder with n nodes.

    Attributes:
        v_pu: [B, n] complex node voltages, pu of each node's line-to-neutral base.
        v_mag_pu: [B, n] voltage magnitudes, pu.
        v_active_pu: [B, m] complex voltages at the active nodes (pass as `v_init` to warm-start).
        converged: [B] bool, the row met the tolerance.
        iterations: [B] int, fixed-point iterations the row took.
        source_p_kw, source_q_kvar: [B] power drawn from the source (None unless requested).
        currents_a: [B, c] complex terminal-1 conductor currents of lines and transformers (None unless
            requested); names in `CompiledFeeder.current_names`.
    """

    v_pu: torch.Tensor
    v_mag_pu: torch.Tensor
    v_active_pu: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor
    source_p_kw: torch.Tensor | None = None
    source_q_kvar: torch.Tensor | None = None
    currents_a: torch.Tensor | None = None

    def v_volts(self, compiled: CompiledFeeder) -> torch.Tensor:
        """[B, n] complex node voltages in volts."""
        return self.v_pu * compiled.v_base_v


def _injected_current(c: CompiledFeeder, v: torch.Tensor, p_br, q_br, p_inj, q_inj) -> torch.Tensor:
    """Current injected at each active node, [B, m] (pu: s_kva = v * conj(i)), for voltages v [B, m]."""
    batch, m = v.shape
    v_ext = torch.cat([v, v.new_zeros(batch, 1)], dim=1)  # slot m is ground
    u = v_ext[:, c.branch_from] - v_ext[:, c.branch_to]
    ratio = u.abs() / c.branch_v_nominal_pu
    s = torch.complex(p_br * ratio.pow(c.branch_p_exponent), q_br * ratio.pow(c.branch_q_exponent))
    j = (s / u).conj()  # branch current, from -> to, drawn by the load
    i_ext = v.new_zeros(batch, m + 1)
    i_ext = i_ext.index_add(1, c.branch_from, -j).index_add(1, c.branch_to, j)
    s_inj = torch.complex(p_inj, q_inj)
    i_inj = -(s_inj / v[:, c.injection_nodes]).conj()
    return i_ext[:, :m].index_add(1, c.injection_nodes, i_inj)


def _fixed_point_map(c: CompiledFeeder, v, p_br, q_br, p_inj, q_inj) -> torch.Tensor:
    return c.w_active + _injected_current(c, v, p_br, q_br, p_inj, q_inj) @ c.z_active.T


def _iterate(c: CompiledFeeder, v, params, tol: float, max_iter: int):
    """Forward fixed point, no tape. Returns (v [B,m], converged [B], iterations [B])."""
    batch = v.shape[0]
    converged = torch.zeros(batch, dtype=torch.bool, device=v.device)
    failed = torch.zeros_like(converged)
    iterations = torch.zeros(batch, dtype=torch.long, device=v.device)
    for _ in range(max_iter):
        v_new = _fixed_point_map(c, v, *params)
        mag = v_new.abs()
        bad = ~torch.isfinite(mag).all(dim=1) | (mag < _DIVERGED_V_PU[0]).any(dim=1) | (mag > _DIVERGED_V_PU[1]).any(dim=1)
        step = (v_new - v).abs().amax(dim=1)
        active = ~(converged | failed)
        iterations += active.long()
        failed = failed | (active & bad)
        # frozen rows (converged or failed) keep their last value
        v = torch.where((active & ~bad).unsqueeze(1), v_new, v)
        converged = converged | (active & ~bad & (step < tol))
        if bool((converged | failed).all()):
            break
    return v, converged, iterations


class _ImplicitFixedPoint(torch.autograd.Function):
    """v* = T(v*, s): forward by iteration, backward by the adjoint fixed point (implicit function theorem)."""

    @staticmethod
    def forward(ctx, p_br, q_br, p_inj, q_inj, v_init, compiled, tol, max_iter, adjoint_tol, adjoint_max_iter):
        params = (p_br, q_br, p_inj, q_inj)
        v, converged, iterations = _iterate(compiled, v_init, params, tol, max_iter)
        ctx.save_for_backward(v, converged, *params)
        ctx.compiled = compiled
        ctx.adjoint = (adjoint_tol, adjoint_max_iter)
        ctx.mark_non_differentiable(converged, iterations)
        return v, converged, iterations

    @staticmethod
    def backward(ctx, grad_v, _grad_converged, _grad_iterations):
        v, converged, *params = ctx.saved_tensors
        compiled = ctx.compiled
        adjoint_tol, adjoint_max_iter = ctx.adjoint
        mask = converged.unsqueeze(1)
        g = torch.where(mask, grad_v, torch.zeros_like(grad_v))
        with torch.enable_grad():
            _, vjp_fn = vjp(lambda vv, *pp: _fixed_point_map(compiled, vv, *pp), v, *params)
        lam = g
        scale = g.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
        for _ in range(adjoint_max_iter):
            lam_new = g + vjp_fn(lam)[0]
            done = ((lam_new - lam).abs().amax(dim=1, keepdim=True) <= adjoint_tol * scale).all()
            lam = lam_new
            if bool(done):
                break
        # rows whose adjoint did not settle (or blew up) contribute nothing rather than a wrong gradient
        lam = torch.where(torch.isfinite(lam).all(dim=1, keepdim=True) & mask, lam, torch.zeros_like(lam))
        grads = vjp_fn(lam)[1:]
        return (*grads, None, None, None, None, None, None)


def solve(
    compiled: CompiledFeeder,
    load_p_kw: torch.Tensor | None = None,
    load_q_kvar: torch.Tensor | None = None,
    injection_p_kw: torch.Tensor | None = None,
    injection_q_kvar: torch.Tensor | None = None,
    *,
    batch_size: int | None = None,
    v_init: torch.Tensor | None = None,
    tol: float = 1e-10,
    max_iter: int = 100,
    adjoint_tol: float = 1e-12,
    adjoint_max_iter: int = 200,
    return_source_power: bool = False,
    return_currents: bool = False,
    raise_on_failure: bool = False,
) -> PowerFlowResult:
    """Solve a batch of operating points; differentiable w.r.t. every power input.

    Args:
        compiled: the feeder, from `compile`.
        load_p_kw, load_q_kvar: [B, n_loads] (or [n_loads]) nominal power of each feeder load (its ZIP
            exponents apply), positive = consumption. Default: the feeder's own loads.
        injection_p_kw, injection_q_kvar: [B, j] constant-power single-phase (to ground) demand at each
            injection node (`compiled.injection_node_names`), positive = consumption. Default: zero.
        batch_size: B when no input has a batch dimension (default 1).
        v_init: [B, m] complex initial voltages at the active nodes (warm start); default: no-load voltages.
        tol: convergence tolerance on the largest voltage change in one iteration, pu.
        max_iter: iteration limit; rows that hit it are reported `converged=False`.
        adjoint_tol, adjoint_max_iter: same for the backward adjoint iteration (relative to the gradient).
        return_source_power: also return the power drawn from the source.
        return_currents: also return the terminal-1 conductor currents of lines and transformers.
        raise_on_failure: raise PowerFlowError if any row fails to converge (instead of flagging it).

    Returns:
        PowerFlowResult.
    """
    c = compiled
    inputs = {"load_p_kw": (load_p_kw, c.load_p_kw), "load_q_kvar": (load_q_kvar, c.load_q_kvar),
              "injection_p_kw": (injection_p_kw, None), "injection_q_kvar": (injection_q_kvar, None)}
    sizes = {"load_p_kw": c.n_loads, "load_q_kvar": c.n_loads, "injection_p_kw": c.n_injections,
             "injection_q_kvar": c.n_injections}
    batches = {x.shape[0] for x, _ in inputs.values() if x is not None and x.dim() == 2}
    if v_init is not None:
        batches.add(v_init.shape[0])
    if batch_size is not None:
        batches.add(batch_size)
    if len(batches) > 1:
        raise ValueError(f"inputs disagree on the batch size: {sorted(batches)}")
    batch = batches.pop() if batches else 1
    tensors = {}
    for name, (x, default) in inputs.items():
        if x is None:
            x = default if default is not None else torch.zeros(sizes[name], dtype=c.dtype, device=c.device)
        x = torch.as_tensor(x, dtype=c.dtype, device=c.device)
        if x.dim() not in (1, 2) or x.shape[-1] != sizes[name]:
            raise ValueError(f"{name} must have shape [B, {sizes[name]}] or [{sizes[name]}], got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        tensors[name] = x.expand(batch, sizes[name])
    p_br = tensors["load_p_kw"][:, c.branch_load] * c.branch_share
    q_br = tensors["load_q_kvar"][:, c.branch_load] * c.branch_share
    if v_init is None:
        v_init = c.w_active.expand(batch, -1)
    elif v_init.shape != (batch, c.w_active.shape[0]):
        raise ValueError(f"v_init must have shape [{batch}, {c.w_active.shape[0]}], got {tuple(v_init.shape)}")
    v_init = v_init.detach().to(c.w_active.dtype)

    v_active, converged, iterations = _ImplicitFixedPoint.apply(
        p_br, q_br, tensors["injection_p_kw"], tensors["injection_q_kvar"], v_init, c, tol, max_iter,
        adjoint_tol, adjoint_max_iter)
    if raise_on_failure and not bool(converged.all()):
        bad = (~converged).nonzero().flatten().tolist()
        raise PowerFlowError(f"power flow did not converge for batch rows {bad[:10]} "
                             f"(of {batch}) within {max_iter} iterations")
    i_active = _injected_current(c, v_active, p_br, q_br, tensors["injection_p_kw"], tensors["injection_q_kvar"])
    v_all = c.w_all + i_active @ c.z_all_active.T
    result = {"v_pu": v_all, "v_mag_pu": v_all.abs(), "v_active_pu": v_active, "converged": converged,
              "iterations": iterations}
    if return_source_power or return_currents:
        v_volts = v_all * c.v_base_v
        if return_source_power:
            v_src = v_volts[:, c.source_nodes]
            i_src = (c.source_emf_v - v_src) @ c.source_y_s.T
            s_src = (v_src * i_src.conj()).sum(dim=1) / 1e3
            result["source_p_kw"], result["source_q_kvar"] = s_src.real, s_src.imag
        if return_currents:
            result["currents_a"] = v_volts @ c.current_matrix.T
    return PowerFlowResult(**result)
