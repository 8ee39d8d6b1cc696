"""Batched three-phase power flow with an implicit-differentiation gradient.

Forward: the Z-bus fixed point `v = T(v, s) = w + Z i(v, s)` on the active nodes (see `compile`), run
without an autograd tape. Backward: at the solution `v* = T(v*, s)` the implicit function theorem gives
`dL/ds = (dT/ds)^T lam` with the adjoint `lam = g + (dT/dv)^T lam`, a fixed point with the same contraction
as the forward map; it is solved with closed-form vector-Jacobian products of T (one matrix product per
step), so memory does not grow with the iteration count and nothing is backpropagated through iterations.

Rows that do not converge (or diverge) are frozen, flagged `converged=False`, and get zero gradient: no
NaN reaches a gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import scipy.sparse
import torch

from gridedge_env.powerflow.compile import (
    ROW_HIGH_Z,
    ROW_INJECTION,
    ROW_INTERP_I,
    ROW_INTERP_Z,
    ROW_LOW_Z,
    CompiledFeeder,
)

# an iteration that moves a voltage by more than this (pu), or to NaN, marks its row as diverging
_DIVERGED_STEP_PU = 10.0


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


def _across(c: CompiledFeeder, x: torch.Tensor) -> torch.Tensor:
    """[B, d]: x at each branch slot's first end minus x at its second (ground for the extra wye slots)."""
    if c.delta_to_weight is None:
        return x[:, c.delta_from] - x[:, c.delta_to]
    return x[:, c.delta_from] - x[:, c.delta_to] * c.delta_to_weight.to(x.dtype)


def _scatter_across(c: CompiledFeeder, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Add each branch slot's current j [B, d] into i [B, m] (in place): injected at its first end, drawn
    from its second."""
    second = j if c.delta_to_weight is None else j * c.delta_to_weight.to(j.dtype)
    return i.index_add_(1, c.delta_from, j).index_add_(1, c.delta_to, second, alpha=-1)


def _limits(c: CompiledFeeder, part: slice) -> torch.Tensor | None:
    return None if c.inverse_limits is None else c.inverse_limits[:, part]


def _regions(x: torch.Tensor, inverse_limits: torch.Tensor | None):
    """Masks (high, interp, low) [B, k] of the slots whose magnitude 1/x is above their upper limit, between
    their low and lower limits, at or below their low limit; None when every slot is inside its limits."""
    if inverse_limits is None:
        return None
    below = x >= inverse_limits[1]
    high = x < inverse_limits[2]
    if not bool((below | high).any()):
        return None
    low = x >= inverse_limits[0]
    return high, below & ~low, low


def _slot_factor(coef: torch.Tensor, x: torch.Tensor, regions) -> torch.Tensor:
    """K with i = u K(|u|), for coefficient rows coef [N_ROWS, B, k] and x = 1/|u| (complex dtype), ordinary
    autograd: (a x + b) x + c inside the limits, the outside rows where `regions` say, plus the injections'
    constant power (row 7) x^2."""
    k = (coef[0] * x + coef[1]) * x + coef[2]
    if regions is not None:
        high, interp, low = regions
        outside = torch.where(
            high, coef[ROW_HIGH_Z], torch.where(interp, coef[ROW_INTERP_I] * x + coef[ROW_INTERP_Z], coef[ROW_LOW_Z])
        )
        k = torch.where(high | interp | low, outside, k)
    return k + coef[ROW_INJECTION] * x * x if coef.shape[0] > ROW_INJECTION else k


def _injected_current(c: CompiledFeeder, v: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """Current injected at each active node, [B, m] (pu: s_kva = v * conj(i)), for voltages v [B, m].

    `coef` [B, N_ROWS, s] holds minus the conjugated power coefficients of each slot, so that a slot with
    voltage u injects `u * K(|u|)`: a load drawing s(u) = S_P + S_I |u| + S_Z |u|^2 injects
    -conj(s / u) = u * (-conj(S_P) / |u|^2 - conj(S_I) / |u| - conj(S_Z)). Ordinary autograd (the reference
    the implicit gradient is tested against).
    """
    m = v.shape[1]
    coef = coef.transpose(0, 1)
    x = _inverse_magnitude(v)
    i = v * _slot_factor(coef[:, :, :m], x.to(v.dtype), _regions(x, _limits(c, slice(0, m))))
    if c.delta_from.numel():
        u = _across(c, v)
        xd = _inverse_magnitude(u)
        j = u * _slot_factor(coef[:, :, m:], xd.to(u.dtype), _regions(xd, _limits(c, slice(m, None))))
        i = _scatter_across(c, i.clone(), j)
    return i


def slot_coefficients(c: CompiledFeeder, load_p_kw, load_q_kvar, injection_p_kw, injection_q_kvar) -> torch.Tensor:
    """Aggregate loads [B, n_loads] and injections [B, j] into slot coefficients [B, N_ROWS, s] (complex).

    Returned negated and conjugated (-P + iQ), as `_injected_current` expects; differentiable by ordinary
    autograd. The sign is applied to the (small) inputs and the real and imaginary parts are assembled once,
    which keeps both passes free of complex-valued copies of the result.
    """
    batch = load_p_kw.shape[0]
    size = c.n_rows * c.n_slots
    minus_p = load_p_kw.new_zeros(batch, size)
    minus_p.index_add_(1, c.p_columns, load_p_kw[:, c.p_loads] * -c.p_weights)
    minus_p.index_add_(1, c.injection_columns, -injection_p_kw)
    plus_q = load_q_kvar.new_zeros(batch, size)
    plus_q.index_add_(1, c.q_columns, load_q_kvar[:, c.q_loads] * c.q_weights)
    plus_q.index_add_(1, c.injection_columns, injection_q_kvar)
    return torch.complex(minus_p, plus_q).view(batch, c.n_rows, c.n_slots)


def _fixed_point_map(c: CompiledFeeder, v: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """T(v) with ordinary autograd: the reference the implicit gradient is tested against (unrolled)."""
    return c.w_active + _injected_current(c, v, coef) @ c.z_active_dense.T


def _inverse_magnitude(v: torch.Tensor) -> torch.Tensor:
    """1/|v| (real), from the real and imaginary parts (much faster than complex abs)."""
    return (v * v.conj()).real.rsqrt()


def _fused_factor(coef_t: torch.Tensor, x: torch.Tensor, regions) -> torch.Tensor:
    """`_slot_factor` for the tape-free passes: fused in-place operations on fresh tensors."""
    k = torch.addcmul(coef_t[1], coef_t[0], x).mul_(x).add_(coef_t[2])
    if regions is not None:
        high, interp, low = regions
        outside = torch.where(interp, torch.addcmul(coef_t[ROW_INTERP_Z], coef_t[ROW_INTERP_I], x), coef_t[ROW_LOW_Z])
        outside = torch.where(high, coef_t[ROW_HIGH_Z], outside)
        k = torch.where(high | interp | low, outside, k)
    return k.addcmul_(coef_t[ROW_INJECTION], x * x) if coef_t.shape[0] > ROW_INJECTION else k


def _iterate(c: CompiledFeeder, v, coef_t, tol: float, max_iter: int):
    """Forward fixed point, no tape, coefficients `coef_t` [N_ROWS, B, s]. Returns (v [B,m], converged [B],
    iterations [B])."""
    batch, m = v.shape
    w = c.w_active.expand(batch, m)
    converged = torch.zeros(batch, dtype=torch.bool, device=v.device)
    failed = torch.zeros_like(converged)
    iterations = torch.zeros(batch, dtype=torch.long, device=v.device)
    i_previous = None
    for _ in range(max_iter):
        i = _node_current(c, v, coef_t)
        if i_previous is None or c.recovery is None:
            v_new = c.z_product(i, w)
        else:
            # sparse solves round relative to their right-hand side (about eps * cond(Y) * |i|, 1e-13 to 1e-11
            # pu), which would floor the step at that level: T(v_k) = T(v_(k-1)) + Z (i_k - i_(k-1)) with
            # T(v_(k-1)) = v_k (frozen rows aside, which keep their iterate) solves for the change only
            v_new = c.z_product(i - i_previous, v)
        i_previous = i
        # largest change of a real or imaginary part (cheaper than the modulus, and within sqrt(2) of it)
        step = torch.view_as_real(v_new - v).abs().amax(dim=(1, 2))
        running = ~(converged | failed)
        iterations += running.long()
        # a non-finite or huge step means the row diverges: it stays frozen at its last finite iterate from
        # this iteration on, so what it reports never depends on the other rows
        bad = running & ~(step < _DIVERGED_STEP_PU)
        failed = failed | bad
        if bool(failed.any()):
            v_new = torch.where(failed.unsqueeze(1), v, v_new)
        # converged rows keep iterating with the batch: at the fixed point that changes them by < tol
        v = v_new
        converged = converged | (running & ~bad & (step < tol))
        if bool((converged | failed).all()):
            break
    return v, converged, failed, iterations


def _linearisation(c: CompiledFeeder, v: torch.Tensor, coef_t: torch.Tensor, dense: bool = True):
    """Per row, the [m, m] matrices (A, B) of the active-node currents' linearisation, di = A dv + B conj(dv),
    at voltages v [B, m]: complex [B, m, m] tensors (``dense``), or lists of B sparse scipy matrices (diagonal
    plus the ungrounded branches' incidence terms)."""
    m = v.shape[1]
    a_conj, b = _local_jacobian(v, coef_t[:, :, :m], _limits(c, slice(0, m)))
    branches = None
    if c.delta_from.numel():
        u = _across(c, v)
        ad_conj, bd = _local_jacobian(u, coef_t[:, :, m:], _limits(c, slice(m, None)))
        k = torch.arange(c.delta_from.numel(), device=v.device)
        incidence = torch.zeros(len(k), m, dtype=v.dtype, device=v.device)
        incidence[k, c.delta_from] = 1.0
        incidence[k, c.delta_to] -= 1.0 if c.delta_to_weight is None else c.delta_to_weight
        branches = (incidence, ad_conj.conj(), bd)
    if dense:
        big_a, big_b = torch.diag_embed(a_conj.conj()), torch.diag_embed(b)
        if branches is not None:
            incidence, ad, bd = branches
            big_a = big_a + incidence.T @ (ad.unsqueeze(2) * incidence)
            big_b = big_b + incidence.T @ (bd.unsqueeze(2) * incidence)
        return big_a, big_b
    as_np = lambda x: x.detach().resolve_conj().cpu().numpy()  # noqa: E731
    a_rows, b_rows = as_np(a_conj.conj()), as_np(b)
    if branches is not None:
        incidence, ad, bd = (as_np(x) for x in branches)
        incidence = scipy.sparse.csr_matrix(incidence)
    big_a, big_b = [], []
    for k in range(v.shape[0]):
        a_k, b_k = scipy.sparse.diags(a_rows[k]), scipy.sparse.diags(b_rows[k])
        if branches is not None:
            a_k = a_k + incidence.T @ scipy.sparse.diags(ad[k]) @ incidence
            b_k = b_k + incidence.T @ scipy.sparse.diags(bd[k]) @ incidence
        big_a.append(a_k.tocsr())
        big_b.append(b_k.tocsr())
    return big_a, big_b


def _solve_linearised(c: CompiledFeeder, v: torch.Tensor, coef_t: torch.Tensor, rhs: torch.Tensor, adjoint: bool):
    """x [B, m] with x - Z (A x + B conj(x)) = rhs, (A, B) the linearisation at v (Newton's step), or with
    `adjoint` x - Z^H (conj(A) x + B conj(x)) = rhs (its adjoint); NaN rows where the system is singular.
    Small feeders: one dense real 2m system per row with Z_TT. Feeders on the sparse path: one sparse real
    2n system per row (`SparseRecovery.solve_linearised`), so Z_TT is never formed."""
    if c.recovery is None:
        big_a, big_b = _linearisation(c, v, coef_t)
        z = c.z_active.mH if adjoint else c.z_active
        return _solve_conjugate_linear(z @ (big_a.conj() if adjoint else big_a), z @ big_b, rhs)
    big_a, big_b = _linearisation(c, v, coef_t, dense=False)
    x = c.recovery.solve_linearised(big_a, big_b, rhs.detach().cpu().numpy(), adjoint)
    return torch.as_tensor(x, dtype=rhs.dtype, device=rhs.device)


def _solve_conjugate_linear(m1: torch.Tensor, m2: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """x [B, m] with x - m1 x - m2 conj(x) = rhs (m1, m2 [B, m, m] complex), as one real 2m system per row;
    NaN in the rows whose system is singular."""
    m = rhs.shape[1]
    eye = torch.eye(m, dtype=rhs.real.dtype, device=rhs.device)
    r1, i1, r2, i2 = m1.real, m1.imag, m2.real, m2.imag
    system = torch.cat([torch.cat([eye - r1 - r2, i1 - i2], dim=2), torch.cat([-i1 - i2, eye - r1 + r2], dim=2)], dim=1)
    x, info = torch.linalg.solve_ex(system, torch.cat([rhs.real, rhs.imag], dim=1))
    x = torch.complex(x[:, :m], x[:, m:])
    return torch.where((info == 0).unsqueeze(1), x, torch.full_like(x, torch.nan))  # NaN rows: singular


#: Newton steps a row that the fixed point could not solve gets, and halvings of a step that does not
#: reduce the residual
_NEWTON_MAX_ITER = 50
_NEWTON_HALVINGS = 12
_NEWTON_FORCED_STEPS = 5


def _newton(c: CompiledFeeder, v: torch.Tensor, coef_t: torch.Tensor, tol: float):
    """Newton's method on F(v) = T(v) - v for rows where the fixed point stalls or diverges (a step is halved
    until the residual falls). Returns (v, converged, iterations); converged as the fixed point's test:
    every real and imaginary part of T(v) - v below tol."""
    batch, m = v.shape
    incremental = c.recovery is not None

    def residual(x, base=None):
        i = _node_current(c, x, coef_t)
        if base is None or not incremental:
            f = c.z_product(i, c.w_active.expand(x.shape[0], m)) - x
        else:
            # sparse solves round relative to their right-hand side (as in `_iterate`): from the last accepted
            # point (x0, i0, F(x0)), F(x) = F(x0) + Z (i - i0) - (x - x0), so the rounding shrinks with the step
            x0, i0, f0 = base
            f = c.z_product(i - i0, f0) - (x - x0)
        size = torch.view_as_real(f).abs().amax(dim=(1, 2))
        return f, torch.where(torch.isfinite(size), size, torch.full_like(size, torch.inf)), i

    stuck = torch.zeros(batch, dtype=torch.bool, device=v.device)
    iterations = torch.zeros(batch, dtype=torch.long, device=v.device)
    forced_steps = torch.zeros_like(iterations)
    f, size, i = residual(v)
    for _ in range(_NEWTON_MAX_ITER):
        active = ~(size < tol) & ~stuck
        if not bool(active.any()):
            break
        iterations += active.long()
        dv = torch.zeros_like(v)
        dv[active] = _solve_linearised(c, v[active], coef_t[:, active], f[active], adjoint=False)
        stuck = stuck | (active & ~_finite_rows(dv))
        active = active & ~stuck
        dv = torch.where(active.unsqueeze(1), dv, torch.zeros_like(dv))
        t = torch.ones(batch, dtype=size.dtype, device=v.device)
        accepted = ~active
        point = (v, f, size, i)  # per row: the point the step goes to, its residual, size and currents
        for _ in range(_NEWTON_HALVINGS):
            trial = v + t.unsqueeze(1).to(v.dtype) * dv
            evaluated = (trial, *residual(trial, (v, i, f)))
            better = ~accepted & (evaluated[2] < size)
            point = _where_rows(better, evaluated, point)
            accepted = accepted | better
            if bool(accepted.all()):
                break
            t = torch.where(accepted, t, t / 2)
        # a row whose residual no step reduces takes the full step anyway, a few times (the load laws' kinks
        # can make the residual rise on the way), and then stops
        forced = ~accepted & (forced_steps < _NEWTON_FORCED_STEPS)
        if bool(forced.any()):
            point = _where_rows(forced, (v + dv, *residual(v + dv, (v, i, f))), point)
            forced_steps += forced.long()
        stuck = stuck | (~accepted & ~forced)
        v, f, size, i = point
    return v, size < tol, iterations


def _where_rows(rows: torch.Tensor, new: tuple, old: tuple) -> tuple:
    """Per tensor of `new` and `old` ([B] or [B, k]), `new`'s rows where `rows` [B] is True, else `old`'s."""
    return tuple(torch.where(rows if a.dim() == 1 else rows.unsqueeze(1), a, b) for a, b in zip(new, old, strict=True))


def _finite_rows(x: torch.Tensor) -> torch.Tensor:
    """[B] True where every entry of the complex row x [B, k] is finite."""
    return torch.isfinite(torch.view_as_real(x)).all(dim=2).all(dim=1)


def _local_jacobian(u: torch.Tensor, coef_t: torch.Tensor, inverse_limits):
    """For i = u K(|u|) with coefficient rows `coef_t` [N_ROWS, B, k]: (conj(di/du), di/dconj(u)) elementwise,
    the two Wirtinger derivatives, both materialised (a lazy conjugate would be copied again in every adjoint
    step).

    With x = 1/|u|: di/du = K + r dK/dr / 2 and di/dconj(u) = (r dK/dr / 2) u^2 / r^2, where r dK/dr / 2 is
    -(2 a x + b) x / 2 inside the limits (K = (a x + b) x + c), -b' x / 2 between the low and lower limits
    (K = b' x + c'), 0 where the law is an impedance, and -e x^2 for the injections (K = e x^2). Exact away
    from the switching magnitudes; at one, the side the forward chose (the region tests of `_regions`).
    """
    xr = _inverse_magnitude(u)
    x = xr.to(u.dtype)
    regions = _regions(xr, inverse_limits)
    half_r_dk = torch.addcmul(coef_t[1], coef_t[0], x, value=2.0).mul_(x).mul_(-0.5)
    if regions is not None:
        high, interp, low = regions
        outside = torch.where(interp, coef_t[ROW_INTERP_I] * x * -0.5, torch.zeros_like(x))
        half_r_dk = torch.where(high | interp | low, outside, half_r_dk)
    if coef_t.shape[0] > ROW_INJECTION:
        half_r_dk.addcmul_(coef_t[ROW_INJECTION], x * x, value=-1.0)
    k = _fused_factor(coef_t, x, regions)
    di_du_conj = k.add_(half_r_dk).conj().resolve_conj()
    di_dconj = half_r_dk.mul_(u).mul_(u).mul_(x).mul_(x)
    return di_du_conj, di_dconj


def _node_current(c: CompiledFeeder, v: torch.Tensor, coef_t: torch.Tensor) -> torch.Tensor:
    """`_injected_current` for the tape-free forward: fused in-place operations on coefficients laid out
    `coef_t` [N_ROWS, B, s] (contiguous per coefficient), about twice as fast on a CPU."""
    m = v.shape[1]
    x = _inverse_magnitude(v)
    i = _fused_factor(coef_t[:, :, :m], x.to(v.dtype), _regions(x, _limits(c, slice(0, m)))).mul_(v)
    if c.delta_from.numel():
        u = _across(c, v)
        xd = _inverse_magnitude(u)
        j = _fused_factor(coef_t[:, :, m:], xd.to(u.dtype), _regions(xd, _limits(c, slice(m, None)))).mul_(u)
        _scatter_across(c, i, j)
    return i


def _coefficient_grad(out: torch.Tensor, u: torch.Tensor, mu: torch.Tensor, inverse_limits) -> None:
    """Fill out [N_ROWS, B, k] with the gradient of i = u K(|u|) w.r.t. the coefficient rows, given mu: each
    row's factor of K (x^2, x, 1 inside the limits; 1; x, 1; 1 outside; x^2 for the injections) times
    conj(u) mu, in the rows of the region each slot is in."""
    xr = _inverse_magnitude(u)
    x = xr.to(u.dtype)
    regions = _regions(xr, inverse_limits)
    base = torch.mul(u.conj(), mu)
    torch.mul(base, x, out=out[1])
    torch.mul(out[1], x, out=out[0])
    out[2].copy_(base)
    if out.shape[0] > ROW_INJECTION:
        out[ROW_INJECTION].copy_(out[0])
        out[ROW_HIGH_Z:ROW_INJECTION].zero_()
    if regions is not None:
        high, interp, low = regions
        zero = torch.zeros((), dtype=u.dtype, device=u.device)
        out[ROW_HIGH_Z] = torch.where(high, base, zero)
        out[ROW_INTERP_I] = torch.where(interp, out[1], zero)
        out[ROW_INTERP_Z] = torch.where(interp, base, zero)
        out[ROW_LOW_Z] = torch.where(low, base, zero)
        inside = ~(high | interp | low)
        out[:3] = torch.where(inside, out[:3], zero)


#: The adjoint's first steps run in single precision until its estimated error is below this (relative;
#: single precision's rounding level is about 6e-8), then double precision refines to `adjoint_tol`:
#: mixed-precision iterative refinement of a linear fixed point, whose later steps remove the earlier steps'
#: rounding. Single-precision steps cost about two thirds of double-precision ones.
_ADJOINT_SINGLE_TOL = 1e-7
_SINGLE_PRECISION = {torch.complex128: torch.complex64}


def _adjoint_iteration(
    c: CompiledFeeder, mu, h, g, product, factors, tol: float, max_iter: int, scale=None, stop_at_rounding: bool = False
):
    """Iterate `mu <- h + Z^H (J_i^T mu + g)` from mu (`product(x, h)` = `h + Z^H x`); returns (mu, scale).

    `factors` = (a, b) of the nodes and of the delta branches (or None): J_i^T mu = a mu + b conj(mu).
    The iteration contracts linearly, so with `d_k` the largest change of step k and `rho = d_k / d_(k-1)` the
    remaining error is about `d_k rho / (1 - rho)`; it stops when that is at most `tol * scale` (`scale`: the
    largest part of mu after the first step, unless given). With `stop_at_rounding` it also stops when the
    changes no longer shrink (the precision's rounding level): the single-precision phase.
    """
    a_node, b_node, a_delta, b_delta = factors
    previous = lam_previous = None
    for _ in range(max_iter):
        lam = torch.addcmul(a_node * mu, b_node, mu.conj())
        if a_delta is not None:
            mb = _across(c, mu)
            gu = torch.addcmul(a_delta * mb, b_delta, mb.conj())
            _scatter_across(c, lam, gu)
        lam.add_(g)
        # on sparse feeders, the change only (as in `_iterate`): mu_k = h + Z^H lam_(k-1) after the first step
        incremental = lam_previous is not None and c.recovery is not None
        mu_new = product(lam - lam_previous, mu) if incremental else product(lam, h)
        lam_previous = lam
        change = float(torch.view_as_real(mu_new - mu).abs().amax())
        mu = mu_new
        if change == 0.0:
            # an exact fixed point: typically mu = 0 at a step with no voltage term in the loss (the change
            # ratio below is then undefined, and the loop would otherwise run to max_iter)
            break
        if scale is None:
            scale = max(float(torch.view_as_real(mu).abs().amax()), torch.finfo(torch.float64).tiny)
        if previous is not None and previous > 0:
            rho = change / previous
            if rho < 1 and change * rho / (1 - rho) <= tol * scale:
                break
            if stop_at_rounding and rho > 0.5:
                break
        previous = change
    return mu, scale


class _ImplicitFixedPoint(torch.autograd.Function):
    """Power flow as one autograd node: coef -> (v_all, |v_all|, v*), with v* = T(v*, coef), v_all = W(v*, coef).

    Forward: iterate `v* = w_T + Z_TT i(v*)` (no tape), then recover `v_all = w + Z_:T i(v*)`.
    Backward (implicit function theorem): both maps apply the same local injection law i(v, coef), so with
    `mu = Z_:T^H g_all + Z_TT^H lam` the adjoint is the fixed point `lam = g* + J_i^T mu` and the coefficient
    gradient is `J_coef^T mu`. `J_i^T mu` is, per slot with voltage u, `conj(di/du) mu + di/dconj(u)
    conj(mu)` (PyTorch's conjugate-Wirtinger convention), so each adjoint step costs one matrix product.
    Rows that did not converge get zero gradient.
    """

    @staticmethod
    def forward(ctx, coef, v_init, compiled, tol, max_iter, adjoint_tol, adjoint_max_iter, fallback):
        coef_t = coef.transpose(0, 1).contiguous()
        v, converged, failed, iterations = _iterate(compiled, v_init, coef_t, tol, max_iter)
        newton = ~converged & fallback
        if bool(newton.any()):
            # robust fallback: Newton's method on the rows that stalled (from where they stopped) or diverged
            # (from the no-load voltages); the solution is the same fixed point, so the gradient is too
            rows = newton.nonzero().flatten()
            start = torch.where(failed[rows].unsqueeze(1), compiled.w_active, v[rows])
            v_newton, ok, steps = _newton(compiled, start, coef_t[:, rows], tol)
            solved = rows[ok]
            iterations[solved] += steps[ok]  # a row Newton cannot solve reports its frozen fixed-point iterate
            v[solved] = v_newton[ok]
            converged[solved] = True
            newton[rows[~ok]] = False
        v_all = compiled.w_all + compiled.recover(_node_current(compiled, v, coef_t))
        finite = _finite_rows(v) & _finite_rows(v_all)
        if not bool(finite.all()):
            # a failed row whose last iterate has no finite currents (a zero branch voltage) reports the
            # no-load voltages rather than NaN; it stays flagged
            keep = finite.unsqueeze(1)
            v = torch.where(keep, v, compiled.w_active)
            v_all = torch.where(keep, v_all, compiled.w_all)
            converged = converged & finite
            newton = newton & finite
        # magnitudes here, so that their backward joins the adjoint's (cheaper than complex abs's own)
        v_mag = torch.linalg.vector_norm(torch.view_as_real(v_all), dim=-1)
        ctx.save_for_backward(v, converged, newton, coef_t, v_all, v_mag)
        ctx.compiled = compiled
        ctx.adjoint = (adjoint_tol, adjoint_max_iter)
        ctx.mark_non_differentiable(converged, iterations)
        return v_all, v_mag, v, converged, iterations

    @staticmethod
    def backward(ctx, grad_all, grad_mag, grad_active, _grad_converged, _grad_iterations):
        v, converged, newton, coef_t, v_all, v_mag = ctx.saved_tensors
        c = ctx.compiled
        adjoint_tol, adjoint_max_iter = ctx.adjoint
        m = v.shape[1]
        has_delta = c.delta_from.numel() > 0
        mask = converged.unsqueeze(1)
        zero = torch.zeros((), dtype=v.dtype, device=v.device)
        if grad_mag is not None:  # d|v|: the real gradient g becomes the complex g v / |v|
            from_mag = torch.view_as_complex(torch.view_as_real(v_all) * (grad_mag / v_mag).unsqueeze(-1))
            grad_all = from_mag if grad_all is None else grad_all + from_mag
        h_all = c.recover_adjoint(grad_all) if grad_all is not None else torch.zeros_like(v)
        g_active = grad_active if grad_active is not None else torch.zeros_like(v)
        direct = None
        if bool(newton.any()):
            # rows Newton solved: where the fixed point does not contract, neither does its adjoint, so
            # their adjoint is solved directly, mu - Z^H (A' mu + B' conj(mu)) = h + Z^H g (see _newton)
            direct = newton.nonzero().flatten()
            rhs = c.z_adjoint_product(g_active[direct], h_all[direct])
            mu_direct = _solve_linearised(c, v[direct], coef_t[:, direct], rhs, adjoint=True)
            mask = (converged & ~newton).unsqueeze(1)
        if not bool(mask.all()):
            h_all = torch.where(mask, h_all, zero)
            g_active = torch.where(mask, g_active, zero)
        if not bool(converged.all()):
            # failed rows get zero gradient; linearise them at the no-load voltages so that no factor of
            # theirs is infinite (0 * inf would put NaN into their adjoint and stall its stopping test)
            v = torch.where(converged.unsqueeze(1), v, c.w_active)
        a_node, b_node = _local_jacobian(v, coef_t[:, :, :m], _limits(c, slice(0, m)))
        if has_delta:
            u = _across(c, v)
            a_delta, b_delta = _local_jacobian(u, coef_t[:, :, m:], _limits(c, slice(m, None)))

        else:
            a_delta = b_delta = None
        factors = (a_node, b_node, a_delta, b_delta)
        # mu = Z_:T^H g_all + Z_TT^H lam is what the coefficient gradient needs; start from lam = 0
        mu, scale = h_all, None
        # the single-precision phase needs the dense Z (large feeders' sparse products are double precision)
        single = _SINGLE_PRECISION.get(v.dtype) if c.recovery is None else None
        if single is not None:

            def low(x):
                return None if x is None else x.to(single)

            mu, scale = _adjoint_iteration(
                c,
                low(h_all),
                low(h_all),
                low(g_active),
                lambda x, offset: torch.addmm(offset, x, c.z_active_single.conj()),
                tuple(map(low, factors)),
                _ADJOINT_SINGLE_TOL,
                adjoint_max_iter,
                stop_at_rounding=True,
            )
            mu = mu.to(v.dtype)
        mu, _ = _adjoint_iteration(
            c, mu, h_all, g_active, c.z_adjoint_product, factors, adjoint_tol, adjoint_max_iter, scale
        )
        if direct is not None:
            mu = mu.index_copy(0, direct, mu_direct)
            mask = converged.unsqueeze(1)
        # rows that did not converge, or whose adjoint blew up, contribute nothing rather than a wrong gradient
        keep = _finite_rows(mu).unsqueeze(1)
        if not bool(keep.all() and converged.all()):
            mu = torch.where(keep & mask, mu, zero)
        # coefficient gradient: i = u (a / r^2 + b / r + c) is linear in the coefficients
        # written through a [rows, B, s] view into the [B, rows, s] layout of coef, which autograd passes on
        grad = coef_t.new_empty((coef_t.shape[1], coef_t.shape[0], coef_t.shape[2]))
        grad_t = grad.transpose(0, 1)
        _coefficient_grad(grad_t[:, :, :m], v, mu, _limits(c, slice(0, m)))
        if has_delta:
            _coefficient_grad(grad_t[:, :, m:], u, _across(c, mu), _limits(c, slice(m, None)))
        return grad, None, None, None, None, None, None, None


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
    adjoint_tol: float = 1e-10,
    adjoint_max_iter: int = 200,
    return_source_power: bool = False,
    return_currents: bool = False,
    raise_on_failure: bool = False,
    fallback: bool = True,
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
        tol: convergence tolerance, pu: the largest change of a voltage's real or imaginary part in one
            iteration.
        max_iter: iteration limit; rows that hit it are reported `converged=False`.
        adjoint_tol, adjoint_max_iter: the backward adjoint iteration stops when its estimated error, relative
            to its largest entry, is below adjoint_tol (rows that hit the limit get whatever it reached).
        return_source_power: also return the power drawn from the source.
        return_currents: also return the terminal-1 conductor currents of lines and transformers.
        raise_on_failure: raise PowerFlowError if any row fails to converge (instead of flagging it).
        fallback: rows the fixed point cannot solve within max_iter (or that diverge) get Newton's method
            (see docs/powerflow.md); False: they are flagged at once.

    Returns:
        PowerFlowResult.
    """
    c = compiled
    inputs = {
        "load_p_kw": (load_p_kw, c.load_p_kw),
        "load_q_kvar": (load_q_kvar, c.load_q_kvar),
        "injection_p_kw": (injection_p_kw, None),
        "injection_q_kvar": (injection_q_kvar, None),
    }
    sizes = {
        "load_p_kw": c.n_loads,
        "load_q_kvar": c.n_loads,
        "injection_p_kw": c.n_injections,
        "injection_q_kvar": c.n_injections,
    }
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
    m = c.w_active.shape[0]
    coef = slot_coefficients(c, **tensors)
    if v_init is None:
        v_init = c.w_active.expand(batch, -1)
    elif v_init.shape != (batch, m):
        raise ValueError(f"v_init must have shape [{batch}, {m}], got {tuple(v_init.shape)}")
    v_init = v_init.detach().to(c.w_active.dtype)
    usable = torch.isfinite(torch.view_as_real(v_init)).all(dim=-1) & (v_init != 0)
    if not bool(usable.all()):  # a zero or non-finite start has no injection law: start there from no load
        v_init = torch.where(usable, v_init, c.w_active)

    v_all, v_mag, v_active, converged, iterations = _ImplicitFixedPoint.apply(
        coef, v_init, c, tol, max_iter, adjoint_tol, adjoint_max_iter, fallback
    )
    if raise_on_failure and not bool(converged.all()):
        bad = (~converged).nonzero().flatten().tolist()
        raise PowerFlowError(
            f"power flow did not converge for batch rows {bad[:10]} (of {batch}) within {max_iter} iterations"
        )
    result = {
        "v_pu": v_all,
        "v_mag_pu": v_mag,
        "v_active_pu": v_active,
        "converged": converged,
        "iterations": iterations,
    }
    if return_source_power or return_currents:
        v_volts = v_all * c.v_base_v
        if return_source_power:
            v_src = v_volts[:, c.source_nodes]
            i_src = (c.source_emf_v - v_src) @ c.source_y_s.T
            s_src = (v_src * i_src.conj()).sum(dim=1) / 1e3
            result["source_p_kw"], result["source_q_kvar"] = s_src.real, s_src.imag
        if return_currents:
            currents = v_volts.new_zeros(batch, len(c.current_names))
            result["currents_a"] = currents.index_add_(
                1, c.current_rows, v_volts[:, c.current_nodes] * c.current_admittances
            )
    return PowerFlowResult(**result)
