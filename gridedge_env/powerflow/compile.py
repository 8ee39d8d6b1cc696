"""Compile a feeder's tables into the tensors the batched power flow iterates on (once per topology).

The power flow is the Z-bus fixed point restricted to the *active* nodes, those that carry a load or an
injection: with `Z = Y^-1` (source Norton admittance included) and `w = Z i_source` the no-load voltages,

    v_T = w_T + Z_TT i_T(v_T)        (iterate on the active nodes T only)
    v   = w   + Z_:T i_T(v_T)        (recover every node once at the end)

All quantities are per unit of each node's line-to-neutral base voltage; currents are scaled so that
`s_kva = v_pu * conj(i)` (so `Z_pu[j, k] = 1000 Z[j, k] / (Vb_j Vb_k)`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch

from gridedge_env.network.model import Feeder, FeederError, Load
from gridedge_env.network.opendss import source_emf_v
from gridedge_env.powerflow.admittance import assemble_ybus_sparse, element_yprims, node_index, source_yprim

_COMPLEX = {torch.float64: torch.complex128, torch.float32: torch.complex64}


#: Feeders of at most this many nodes keep the dense Z_TT [m, m] and Z_:T [n, m] (one matrix product per
#: iteration and per recovery); on a CPU, larger ones apply Z through the sparse LU factors of Y instead, so
#: memory grows with nnz(LU) + B n, not m^2 or n m, and an iteration costs a pair of sparse triangular solves
#: (IEEE-8500, batch 8: 3 ms against 23 ms for the dense product with its 2,354 x 2,354 Z_TT)
DENSE_RECOVERY_NODES = 3000
_COLUMN_BLOCK = 64  # SuperLU's solve slows down sharply with wider blocks (cache)


class SparseRecovery:
    """Products with Z (pu) by solves with the sparse LU factors of Y, on the CPU.

    With `D = diag(1 / V_base)`, `Z_pu = 1000 D Y^-1 D`: so `Z_:T x = 1000 D Y^-1 (D_T x scattered)` and
    `Z_:T^H g = 1000 D_T [Y^-H D g]_T`.
    """

    def __init__(self, y: scipy.sparse.csc_matrix, lu, v_base: np.ndarray, active: np.ndarray):
        self.y, self.lu, self.v_base, self.active = y, lu, v_base, active

    def _scatter(self, x: torch.Tensor) -> np.ndarray:
        """[B, m] pu -> [n, B] right-hand side in amperes-per-volt scale, zero off the active nodes."""
        rhs = np.zeros((len(self.v_base), x.shape[0]), complex)
        rhs[self.active] = (x.detach().cpu().numpy() / self.v_base[self.active]).T
        return rhs

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """`Z_:T x`: [B, m] -> [B, n]."""
        out = 1e3 * self.lu.solve(self._scatter(x)).T / self.v_base
        return torch.as_tensor(out, dtype=x.dtype)

    def apply_active(self, x: torch.Tensor) -> torch.Tensor:
        """`Z_TT x`: [B, m] -> [B, m]."""
        out = 1e3 * self.lu.solve(self._scatter(x))[self.active].T / self.v_base[self.active]
        return torch.as_tensor(out, dtype=x.dtype)

    def adjoint(self, g: torch.Tensor) -> torch.Tensor:
        """`Z_:T^H g`: [B, n] -> [B, m]."""
        rhs = (g.detach().cpu().numpy() / self.v_base).T
        out = 1e3 * self.lu.solve(np.ascontiguousarray(rhs), trans="H")[self.active].T / self.v_base[self.active]
        return torch.as_tensor(out, dtype=g.dtype)

    def adjoint_active(self, x: torch.Tensor) -> torch.Tensor:
        """`Z_TT^H x`: [B, m] -> [B, m]."""
        out = 1e3 * self.lu.solve(self._scatter(x), trans="H")[self.active].T / self.v_base[self.active]
        return torch.as_tensor(out, dtype=x.dtype)

    def solve_linearised(self, a: np.ndarray, b: np.ndarray, rhs: np.ndarray, adjoint: bool) -> np.ndarray:
        """x [B, m] with `x - Z_TT (A x + B conj(x)) = rhs` (`adjoint`: `x - Z_TT^H (conj(A) x + B conj(x))
        = rhs`) for sparse [m, m] matrices A = a[k], B = b[k] per row k, without forming Z_TT: NaN rows where
        the system is singular.

        With `Z_TT = 1000 D E^T Y^-1 E D` (E the active nodes' columns, D = diag(1 / V_base)) and `x = rhs +
        1000 D E^T y`, it is the sparse n-node system `(Y - 1000 E D A D E^T) y - 1000 E D B D E^T conj(y) =
        E D (A rhs + B conj(rhs))` (Y^H for the adjoint), solved as one real 2n system per row: one sparse
        factorisation each instead of a dense 2m one.
        """
        n, m = len(self.v_base), len(self.active)
        scale = 1.0 / self.v_base[self.active]
        embed = scipy.sparse.csr_matrix((1e3 * scale, (self.active, np.arange(m))), shape=(n, m))  # 1000 E D
        y = (self.y.conj().T if adjoint else self.y).tocsr()
        out = np.full(rhs.shape, np.nan, dtype=complex)
        for k in range(rhs.shape[0]):
            a_k = a[k].conj() if adjoint else a[k]
            big_m = y - embed @ a_k @ embed.T / 1e3
            big_n = embed @ b[k] @ embed.T / 1e3
            r = embed @ (a_k @ rhs[k] + b[k] @ rhs[k].conj()) / 1e3
            system = scipy.sparse.bmat(
                [
                    [big_m.real - big_n.real, -big_m.imag - big_n.imag],
                    [big_m.imag - big_n.imag, big_m.real + big_n.real],
                ],
                format="csc",
            )
            try:
                sol = scipy.sparse.linalg.splu(system).solve(np.concatenate([r.real, r.imag]))
            except RuntimeError:  # "Factor is exactly singular": the row stays NaN
                continue
            out[k] = rhs[k] + embed.T @ (sol[:n] + 1j * sol[n:])
        return out

    def z_columns(self, rows: np.ndarray | None):
        """Blocks `(columns, Z[rows, columns])` of `Z_:T` (all rows when `rows` is None), pu, numpy."""
        m = len(self.active)
        for start in range(0, m, _COLUMN_BLOCK):
            cols = np.arange(start, min(start + _COLUMN_BLOCK, m))
            unit = np.zeros((len(self.v_base), len(cols)), complex)
            unit[self.active[cols], np.arange(len(cols))] = 1.0
            block = self.lu.solve(unit) * (1e3 / np.outer(self.v_base, self.v_base[self.active[cols]]))
            yield cols, block if rows is None else block[rows]


@dataclass(frozen=True)
class CompiledFeeder:
    """Tensors of one feeder topology. Shapes: n nodes, m active nodes, d ungrounded load branches, j injections.

    Loads enter as *slots*: each active node (its wye-to-ground loads and injections) and each branch slot
    (a delta phase pair, a wye phase to an ungrounded neutral, or the wye-to-ground loads of a node that
    switch at other voltages than the node's first), s = m + d slots in all. A slot
    draws `s(u) = S_P + S_I |u| + S_Z |u|^2` (kVA, u in pu) inside its loads' voltage limits, and the laws of
    `load_law` outside them: loads are aggregated per slot into N_ROWS coefficient rows once per solve, so the
    iteration never loops over loads.
    """

    feeder: Feeder
    node_names: list[str]
    v_base_v: torch.Tensor  # [n] line-to-neutral base voltage, volts
    active_nodes: torch.Tensor  # [m] node indices iterated on
    w_active: torch.Tensor  # [m] no-load voltages at active nodes, pu (complex)
    # [m, m] Z_TT, pu (complex): a transposed view of a contiguous Z_TT^T, so that the forward's `i @ Z^T` and
    # the adjoint's `mu @ conj(Z)` (a conjugate-transpose of that storage) both run in BLAS without a copy;
    # None on large feeders, whose products go through the sparse factors (`recovery`, `z_product`)
    z_active: torch.Tensor | None
    w_all: torch.Tensor  # [n] no-load voltages, pu (complex)
    z_all_active: torch.Tensor | None  # [n, m] Z_:T, pu (complex); None on large feeders (see `recovery`)
    p_columns: torch.Tensor  # [e] load kW -> slot coefficients (rows N_ROWS x s, flattened): column ...
    p_loads: torch.Tensor  # [e] ... load ...
    p_weights: torch.Tensor  # [e] ... and weight of each entry
    q_columns: torch.Tensor  # the same for load kvar
    q_loads: torch.Tensor
    q_weights: torch.Tensor
    inverse_limits: torch.Tensor | None  # [3, s] 1 / switching magnitude (low, lower, upper); None: never
    injection_columns: torch.Tensor  # [j] flattened coefficient column of each injection's constant power
    delta_from: torch.Tensor  # [d] active-node position of each ungrounded branch's first end
    delta_to: torch.Tensor  # [d] active-node position of its second end
    delta_to_weight: torch.Tensor | None  # [d] 1, or 0 where the second end is ground; None: never ground
    injection_nodes: torch.Tensor  # [j] active-node positions of the injection nodes
    injection_node_names: list[str]
    load_p_kw: torch.Tensor  # [n_loads] the feeder's nominal loads
    load_q_kvar: torch.Tensor  # [n_loads]
    source_nodes: torch.Tensor  # [3] node indices of the source bus
    source_y_s: torch.Tensor  # [3, 3] source Norton admittance, siemens
    source_emf_v: torch.Tensor  # [3] source EMF, volts
    current_names: list[str]  # names of the terminal-1 conductor currents, 'Element.name.k'
    current_rows: torch.Tensor  # [e] terminal-1 conductor currents (A): sum over entries of ...
    current_nodes: torch.Tensor  # [e] ... the voltage (V) at this node ...
    current_admittances: torch.Tensor  # [e] ... times this admittance (S), into this row
    recovery: SparseRecovery | None = None  # Z_:T products by sparse solves where z_all_active is None
    factor_nnz: int = 0  # nonzeros of Y's sparse LU factors (L + U)

    @property
    def dtype(self) -> torch.dtype:
        return self.v_base_v.dtype

    @property
    def device(self) -> torch.device:
        return self.v_base_v.device

    @property
    def n_loads(self) -> int:
        return len(self.feeder.loads)

    @property
    def n_slots(self) -> int:
        return self.w_active.shape[0] + self.delta_from.shape[0]

    def z_product(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """`offset + Z_TT x` for x, offset [B, m] (the fixed point's product), [B, m]."""
        if self.recovery is None:
            return torch.addmm(offset, x, self.z_active.T)
        return offset + self.recovery.apply_active(x)

    def z_adjoint_product(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """`offset + Z_TT^H x` for x, offset [B, m] (the adjoint's product), [B, m]."""
        if self.recovery is None:
            return torch.addmm(offset, x, self.z_active.conj())
        return offset + self.recovery.adjoint_active(x)

    @functools.cached_property
    def z_active_dense(self) -> torch.Tensor:
        """Z_TT [m, m] as a dense tensor: `z_active`, or on large feeders built from the sparse factors on
        first use (Newton's fallback needs it; 88 MB on IEEE-8500)."""
        if self.z_active is not None:
            return self.z_active
        z = np.empty((len(self.recovery.active),) * 2, complex)
        for cols, block in self.recovery.z_columns(self.recovery.active):
            z[:, cols] = block
        return torch.as_tensor(z, dtype=self.w_active.dtype, device=self.device)

    def recover(self, x: torch.Tensor) -> torch.Tensor:
        """Z_:T x for x [B, m]: every node's voltage change from the active nodes' currents, [B, n]."""
        return x @ self.z_all_active.T if self.recovery is None else self.recovery.apply(x)

    def recover_adjoint(self, g: torch.Tensor) -> torch.Tensor:
        """Z_:T^H g for g [B, n], [B, m]."""
        return g @ self.z_all_active.conj() if self.recovery is None else self.recovery.adjoint(g)

    @functools.cached_property
    def z_active_single(self) -> torch.Tensor:
        """`z_active` in single precision (same layout), for the adjoint's first steps; made once."""
        return self.z_active.T.to(torch.complex64).T

    @property
    def n_rows(self) -> int:
        """Coefficient rows per slot: N_ROWS when some load switches law at its voltage limits, else 3."""
        return 3 if self.inverse_limits is None else N_ROWS

    @property
    def n_injections(self) -> int:
        return len(self.injection_node_names)


#: Coefficient rows of a slot's law s(r) (kVA; r = |u|, pu of the node base): inside its loads' voltage
#: limits S_P + S_I r + S_Z r^2 (rows 0-2); above the upper limit a constant impedance (row 3); between the
#: low and the lower limit a current interpolated linearly in r, i.e. constant current plus impedance (rows 4,
#: 5); below the low limit the impedance of the nominal power (row 6); injections, constant power at every
#: voltage (row 7).
N_ROWS = 8
ROW_HIGH_Z, ROW_INTERP_I, ROW_INTERP_Z, ROW_LOW_Z, ROW_INJECTION = 3, 4, 5, 6, 7


def _load_branches(feeder: Feeder, index: dict, v_base: np.ndarray):
    """Expand every load into branches: (from node, to node or -1, load index, share, v_nominal_pu)."""
    branches = []
    for li, load in enumerate(feeder.loads):
        if load.p_exponent not in (0.0, 1.0, 2.0) or load.q_exponent not in (0.0, 1.0, 2.0):
            raise FeederError(
                f"element Load.{load.name}: voltage exponents ({load.p_exponent}, "
                f"{load.q_exponent}) are not supported; gridedge models exponents 0, 1 and 2 "
                "(constant power, current, impedance)"
            )
        nodes = load.terminal.nodes
        bus = load.terminal.bus
        if load.conn == "wye":
            neutral = nodes[load.phases] if len(nodes) > load.phases else 0
            pairs = [(nodes[k], neutral) for k in range(load.phases)]
            v_nominal = load.kv * 1e3 / (math.sqrt(3.0) if load.phases > 1 else 1.0)
        else:
            n = len(nodes)
            pairs = [(nodes[0], nodes[1])] if load.phases == 1 else [(nodes[k], nodes[(k + 1) % n]) for k in range(n)]
            v_nominal = load.kv * 1e3
        for a, b in pairs:
            if a == 0 or (bus, a) not in index or (b and (bus, b) not in index):
                raise FeederError(f"element Load.{load.name}: connection {bus}.{a}-{b} is not a node of the feeder")
            ia = index[(bus, a)]
            ib = index[(bus, b)] if b else -1
            branches.append((ia, ib, li, 1.0 / len(pairs), v_nominal / v_base[ia]))
    return branches


def load_law(load: Load, v_nominal: float, limits: bool) -> tuple[np.ndarray, np.ndarray, tuple | None]:
    """OpenDSS's law of one load branch as coefficient rows (see N_ROWS) of its P and of its Q, and its
    switching magnitudes (low, lower, upper; pu of the node base), None when it never switches.

    With v = r / v_nominal: inside vminpu < v <= vmaxpu, p = P v^a and q = Q v^b. Outside (OpenDSS's
    `Load.pas`, models 1, 3, 4, 5; model 2 never switches): above vmaxpu s = S v^2 / vmaxpu^2 (model 5:
    / vmaxpu); between vlowpu and vminpu the current magnitude runs linearly from its value at vlowpu on the
    nominal impedance to its value at vminpu on the impedance S / vminpu^2 (model 5: the nominal current),
    which is s = S (vlowpu (1 - k) v + k v^2); at or below vlowpu s = S v^2.
    """
    p, q = np.zeros(N_ROWS - 1), np.zeros(N_ROWS - 1)
    p[int(load.p_exponent)] = v_nominal**-load.p_exponent
    q[int(load.q_exponent)] = v_nominal**-load.q_exponent
    if load.model == 2 or not limits:
        if load.model == 2:  # the same impedance in every region, so that it can share a switching slot
            p[[ROW_HIGH_Z, ROW_INTERP_Z, ROW_LOW_Z]] = q[[ROW_HIGH_Z, ROW_INTERP_Z, ROW_LOW_Z]] = v_nominal**-2.0
        return p, q, None
    vmin, vmax, vlow = load.vminpu, load.vmaxpu, load.vlowpu
    outside = np.zeros(N_ROWS - 1)
    if vmax > 0:
        outside[ROW_HIGH_Z] = v_nominal**-2.0 / (vmax if load.model == 5 else vmax**2)
    else:  # OpenDSS: no upper limit given means the nominal impedance above it
        outside[ROW_HIGH_Z] = v_nominal**-2.0
    if vmin > vlow:
        i_at_vmin = 1.0 if load.model == 5 else (1.0 / vmin if vmin > 0 else 0.0)
        k = (i_at_vmin - vlow) / (vmin - vlow)
        outside[ROW_INTERP_I] = vlow * (1.0 - k) / v_nominal
        outside[ROW_INTERP_Z] = k * v_nominal**-2.0
    outside[ROW_LOW_Z] = v_nominal**-2.0
    return p + outside, q + outside, (vlow * v_nominal, vmin * v_nominal, vmax * v_nominal)


def compile(
    feeder: Feeder,
    *,
    injection_nodes: list[str] | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    load_voltage_limits: bool = True,
) -> CompiledFeeder:
    """Build the power-flow tensors of `feeder`.

    Args:
        feeder: the network.
        injection_nodes: 'bus.node' names where `solve` accepts single-phase constant-power injections
            (devices, PV). Default: every node that a load is connected to.
        dtype: torch.float64 (default) or torch.float32; voltages are complex of matching precision.
        device: torch device.
        load_voltage_limits: loads follow OpenDSS's law outside their `vminpu`/`vmaxpu` (default); False:
            every load keeps its nominal law at every voltage.
    """
    if dtype not in _COMPLEX:
        raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
    index = node_index(feeder)
    names = [f"{b}.{n}" for (b, n) in index]
    kv_base = {b.name: b.kv_base_ln for b in feeder.buses}
    v_base = np.array([kv_base[b] * 1e3 for (b, _n) in index])
    yprims = element_yprims(feeder)
    try:
        # minimum-degree ordering on Y^T Y: the least fill-in on radial feeders (IEEE-8500: 61k nonzeros)
        ybus = assemble_ybus_sparse(feeder, yprims)
        lu = scipy.sparse.linalg.splu(ybus, permc_spec="MMD_ATA")
    except RuntimeError as exc:  # "Factor is exactly singular"
        raise FeederError(
            f"feeder {feeder.name!r}: admittance matrix is singular (an island without a path to the source?)"
        ) from exc

    # source Norton current, then the no-load voltages
    y_s, s_conductors = source_yprim(feeder.source)
    src_idx = np.array([index[c] for c in s_conductors])
    e = source_emf_v(feeder.source)
    i_source = np.zeros(len(index), complex)
    i_source[src_idx] = y_s @ e
    w = lu.solve(i_source)
    if not np.all(np.isfinite(w)):
        raise FeederError(f"feeder {feeder.name!r}: admittance matrix is singular")

    branches = _load_branches(feeder, index, v_base)
    if injection_nodes is None:
        inj = sorted({b[0] for b in branches} | {b[1] for b in branches if b[1] >= 0})
    else:
        lookup = {nm: i for i, nm in enumerate(names)}
        bad = [nm for nm in injection_nodes if nm.lower() not in lookup]
        if bad:
            raise FeederError(f"feeder {feeder.name!r} has no nodes {bad[:5]}")
        inj = [lookup[nm.lower()] for nm in injection_nodes]
    active = sorted({b[0] for b in branches} | {b[1] for b in branches if b[1] >= 0} | set(inj))
    pos = {node: p for p, node in enumerate(active)}
    m = len(active)

    # terminal-1 conductor currents of every series element: I = Yprim[t1 rows, :] @ V_terminals, kept as
    # (row, node, admittance) entries
    current_entries, current_names = [], []
    terminals = {f"Transformer.{t.name}": len(t.windings) for t in feeder.transformers}
    for name, yprim, conductors in yprims:
        if not (name.startswith("Line.") or name.startswith("Transformer.")):
            continue
        n_t1 = len(conductors) // terminals.get(name, 2)
        for k in range(n_t1):
            row = len(current_names)
            current_entries += [
                (row, index[cond], yprim[k, c]) for c, cond in enumerate(conductors) if cond[1] and cond in index
            ]
            current_names.append(f"{name}.{k + 1}")

    # Z columns of the active nodes (pu), from the sparse factorisation in blocks of columns, kept only for
    # feeders small enough that dense products cost less than sparse solves
    active_np = np.array(active, dtype=np.int64)
    sparse = SparseRecovery(ybus, lu, v_base, active_np)
    dense = len(index) <= DENSE_RECOVERY_NODES or torch.device(device).type != "cpu"
    if dense:
        z_all_active = np.empty((len(index), m), complex)
        for cols, block in sparse.z_columns(None):
            z_all_active[:, cols] = block
        z_active = z_all_active[active_np]

    # slot of every branch: its node for wye-to-ground branches, m + k for the k-th ungrounded branch
    ungrounded = [br for br in branches if br[1] >= 0]
    n_slots = m + len(ungrounded)
    p_entries, q_entries = [], []  # (coefficient row, slot, load index, weight)
    switching = np.full((3, n_slots), np.nan)  # each slot's switching magnitudes (low, lower, upper)
    switch_owner = {}
    k_delta = 0
    extra = {}  # (node, limits) -> slot of wye-to-ground loads that switch at other voltages than the node's
    for ia, ib, li, share, v_nominal in branches:
        load = feeder.loads[li]
        p_rows, q_rows, limits = load_law(load, v_nominal, load_voltage_limits)
        if ib >= 0:
            slot = m + k_delta
            k_delta += 1
        else:
            slot = pos[ia]
            if limits is not None and slot in switch_owner and not np.array_equal(switching[:, slot], limits):
                # a load of this node switches at other magnitudes: it gets a branch slot of its own, from
                # the node to ground
                slot = extra.setdefault((ia, limits), n_slots + len(extra))
                if slot == switching.shape[1]:
                    switching = np.concatenate([switching, np.full((3, 1), np.nan)], axis=1)
        if limits is not None:
            switching[:, slot] = limits
            switch_owner[slot] = load.name
        for entries, law in ((p_entries, p_rows), (q_entries, q_rows)):
            entries += [(r, slot, li, share * w) for r, w in enumerate(law) if w]
    has_limits = bool(switch_owner)
    branch_ends = [(br[0], br[1]) for br in ungrounded] + [(node, -1) for node, _ in extra]
    n_slots += len(extra)
    # injections: constant power at every voltage, so row 0 of a slot that never switches, else row 7; a
    # feeder without switching slots needs only rows 0-2
    n_rows = N_ROWS if has_limits else 3
    injection_columns = [(ROW_INJECTION if pos[i] in switch_owner else 0) * n_slots + pos[i] for i in inj]
    p_entries = [(r * n_slots + slot, li, w) for r, slot, li, w in p_entries if r < n_rows]
    q_entries = [(r * n_slots + slot, li, w) for r, slot, li, w in q_entries if r < n_rows]
    # 1 / magnitude at each switch (the iteration works with inverse magnitudes); a slot that never switches
    # gets limits no magnitude reaches
    with np.errstate(divide="ignore"):
        inverse_limits = 1.0 / np.where(np.isnan(switching), [[0.0], [0.0], [np.inf]], switching)

    cplx = _COMPLEX[dtype]
    as_c = lambda a: torch.as_tensor(np.asarray(a), dtype=cplx, device=device)  # noqa: E731
    as_r = lambda a: torch.as_tensor(np.asarray(a, dtype=float), dtype=dtype, device=device)  # noqa: E731
    as_i = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)  # noqa: E731
    return CompiledFeeder(
        feeder=feeder,
        node_names=names,
        v_base_v=as_r(v_base),
        active_nodes=as_i(active_np),
        w_active=as_c(w[active_np] / v_base[active_np]),
        z_active=as_c(np.ascontiguousarray(z_active.T)).T if dense else None,
        w_all=as_c(w / v_base),
        z_all_active=as_c(z_all_active) if dense else None,
        recovery=None if dense else sparse,
        factor_nnz=int(lu.L.nnz + lu.U.nnz),
        p_columns=as_i([e[0] for e in p_entries]),
        p_loads=as_i([e[1] for e in p_entries]),
        p_weights=as_r([e[2] for e in p_entries]),
        q_columns=as_i([e[0] for e in q_entries]),
        q_loads=as_i([e[1] for e in q_entries]),
        q_weights=as_r([e[2] for e in q_entries]),
        inverse_limits=as_r(inverse_limits) if has_limits else None,
        injection_columns=as_i(injection_columns),
        delta_from=as_i([pos[a] for a, _ in branch_ends]),
        delta_to=as_i([pos[b] if b >= 0 else pos[a] for a, b in branch_ends]),
        delta_to_weight=as_c([float(b >= 0) for _, b in branch_ends]) if extra else None,
        injection_nodes=as_i([pos[i] for i in inj]),
        injection_node_names=[names[i] for i in inj],
        load_p_kw=as_r([ld.p_kw for ld in feeder.loads]),
        load_q_kvar=as_r([ld.q_kvar for ld in feeder.loads]),
        source_nodes=as_i(src_idx),
        source_y_s=as_c(y_s),
        source_emf_v=as_c(e),
        current_names=current_names,
        current_rows=as_i([c[0] for c in current_entries]),
        current_nodes=as_i([c[1] for c in current_entries]),
        current_admittances=as_c([c[2] for c in current_entries]),
    )
