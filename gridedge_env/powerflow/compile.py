"""Compile a feeder's tables into the tensors the batched power flow iterates on (once per topology).

The power flow is the Z-bus fixed point restricted to the *active* nodes, those that carry a load or an
injection: with `Z = Y^-1` (source Norton admittance included) and `w = Z i_source` the no-load voltages,

    v_T = w_T + Z_TT i_T(v_T)        (iterate on the active nodes T only)
    v   = w   + Z_:T i_T(v_T)        (recover every node once at the end)

All quantities are per unit of each node's line-to-neutral base voltage; currents are scaled so that
`s_kva = v_pu * conj(i)` (so `Z_pu[j, k] = 1000 Z[j, k] / (Vb_j Vb_k)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gridedge_env.network.model import Feeder, FeederError
from gridedge_env.network.opendss import source_emf_v
from gridedge_env.powerflow.admittance import assemble_ybus, element_yprims, node_index, source_yprim

_COMPLEX = {torch.float64: torch.complex128, torch.float32: torch.complex64}


@dataclass(frozen=True)
class CompiledFeeder:
    """Tensors of one feeder topology. Shapes: n nodes, m active nodes, d ungrounded load branches, j injections.

    Loads enter as *slots*: each active node (its wye-to-ground loads and injections) and each ungrounded
    load branch (a delta phase pair, or a wye phase to an ungrounded neutral), s = m + d slots in all. A slot
    draws `s(u) = S_P + S_I |u| + S_Z |u|^2` (kVA, u in pu): loads are aggregated per slot into constant
    power, current and impedance coefficients once per solve, so the iteration never loops over loads.
    """

    feeder: Feeder
    node_names: list[str]
    v_base_v: torch.Tensor  # [n] line-to-neutral base voltage, volts
    active_nodes: torch.Tensor  # [m] node indices iterated on
    w_active: torch.Tensor  # [m] no-load voltages at active nodes, pu (complex)
    z_active: torch.Tensor  # [m, m] Z_TT, pu (complex)
    w_all: torch.Tensor  # [n] no-load voltages, pu (complex)
    z_all_active: torch.Tensor  # [n, m] Z_:T, pu (complex)
    p_to_slots: torch.Tensor  # [n_loads, 3 * s] load kW -> (constant P, I, Z) coefficient of each slot
    q_to_slots: torch.Tensor  # [n_loads, 3 * s] load kvar -> the same, for reactive power
    delta_from: torch.Tensor  # [d] active-node position of each ungrounded branch's first end
    delta_to: torch.Tensor  # [d] active-node position of its second end
    injection_nodes: torch.Tensor  # [j] active-node positions of the injection nodes
    injection_node_names: list[str]
    load_p_kw: torch.Tensor  # [n_loads] the feeder's nominal loads
    load_q_kvar: torch.Tensor  # [n_loads]
    source_nodes: torch.Tensor  # [3] node indices of the source bus
    source_y_s: torch.Tensor  # [3, 3] source Norton admittance, siemens
    source_emf_v: torch.Tensor  # [3] source EMF, volts
    current_names: list[str]  # names of the terminal-1 conductor currents, 'Element.name.k'
    current_matrix: torch.Tensor  # [c, n] terminal-1 conductor currents (A) = current_matrix @ V (volts)

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

    @property
    def n_injections(self) -> int:
        return len(self.injection_node_names)


def _load_branches(feeder: Feeder, index: dict, v_base: np.ndarray):
    """Expand every load into branches: (from node, to node or -1, load index, share, v_nominal_pu, exps)."""
    branches = []
    for li, load in enumerate(feeder.loads):
        if load.p_exponent not in (0.0, 1.0, 2.0) or load.q_exponent not in (0.0, 1.0, 2.0):
            raise FeederError(f"element Load.{load.name}: voltage exponents ({load.p_exponent}, "
                              f"{load.q_exponent}) are not supported; gridedge models exponents 0, 1 and 2 "
                              "(constant power, current, impedance)")
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
            branches.append((ia, ib, li, 1.0 / len(pairs), v_nominal / v_base[ia], load.p_exponent,
                             load.q_exponent))
    return branches


def compile(
    feeder: Feeder,
    *,
    injection_nodes: list[str] | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> CompiledFeeder:
    """Build the power-flow tensors of `feeder`.

    Args:
        feeder: the network.
        injection_nodes: 'bus.node' names where `solve` accepts single-phase constant-power injections
            (devices, PV). Default: every node that a load is connected to.
        dtype: torch.float64 (default) or torch.float32; voltages are complex of matching precision.
        device: torch device.
    """
    if dtype not in _COMPLEX:
        raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
    index = node_index(feeder)
    names = [f"{b}.{n}" for (b, n) in index]
    v_base = np.array([feeder.bus(b).kv_base_ln * 1e3 for (b, _n) in index])
    y = assemble_ybus(feeder)
    try:
        z = np.linalg.inv(y)
    except np.linalg.LinAlgError as exc:
        raise FeederError(f"feeder {feeder.name!r}: admittance matrix is singular (an island without a "
                          "path to the source?)") from exc
    if not np.all(np.isfinite(z)):
        raise FeederError(f"feeder {feeder.name!r}: admittance matrix is singular")

    # source Norton current, then the no-load voltages
    y_s, s_conductors = source_yprim(feeder.source)
    src_idx = np.array([index[c] for c in s_conductors])
    e = source_emf_v(feeder.source)
    i_source = np.zeros(len(index), complex)
    i_source[src_idx] = y_s @ e
    w = z @ i_source
    z_pu = 1e3 * z / np.outer(v_base, v_base)

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

    # terminal-1 conductor currents of every series element: I = Yprim[t1 rows, :] @ V_terminals
    rows, current_names = [], []
    for name, yprim, conductors in element_yprims(feeder):
        if not (name.startswith("Line.") or name.startswith("Transformer.")):
            continue
        n_t1 = len(conductors) // 2
        for k in range(n_t1):
            row = np.zeros(len(index), complex)
            for c, cond in enumerate(conductors):
                if cond[1] and cond in index:
                    row[index[cond]] += yprim[k, c]
            rows.append(row)
            current_names.append(f"{name}.{k + 1}")

    # slot of every branch: its node for wye-to-ground branches, m + k for the k-th ungrounded branch
    ungrounded = [b for b in branches if b[1] >= 0]
    n_slots = m + len(ungrounded)
    p_to_slots = np.zeros((len(feeder.loads), 3, n_slots))
    q_to_slots = np.zeros((len(feeder.loads), 3, n_slots))
    k_delta = 0
    for ia, ib, li, share, v_nominal, p_exp, q_exp in branches:
        if ib >= 0:
            slot = m + k_delta
            k_delta += 1
        else:
            slot = pos[ia]
        # s = p (|u| / v_nominal)^k: the coefficient of |u|^k is p / v_nominal^k
        p_to_slots[li, int(p_exp), slot] += share / v_nominal ** p_exp
        q_to_slots[li, int(q_exp), slot] += share / v_nominal ** q_exp

    cplx = _COMPLEX[dtype]
    as_c = lambda a: torch.as_tensor(np.asarray(a), dtype=cplx, device=device)  # noqa: E731
    as_r = lambda a: torch.as_tensor(np.asarray(a, dtype=float), dtype=dtype, device=device)  # noqa: E731
    as_i = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)  # noqa: E731
    active_np = np.array(active, dtype=np.int64)
    return CompiledFeeder(
        feeder=feeder,
        node_names=names,
        v_base_v=as_r(v_base),
        active_nodes=as_i(active_np),
        w_active=as_c(w[active_np] / v_base[active_np]),
        z_active=as_c(z_pu[np.ix_(active_np, active_np)]),
        w_all=as_c(w / v_base),
        z_all_active=as_c(z_pu[:, active_np]),
        p_to_slots=as_r(p_to_slots.reshape(len(feeder.loads), -1)),
        q_to_slots=as_r(q_to_slots.reshape(len(feeder.loads), -1)),
        delta_from=as_i([pos[b[0]] for b in ungrounded]),
        delta_to=as_i([pos[b[1]] for b in ungrounded]),
        injection_nodes=as_i([pos[i] for i in inj]),
        injection_node_names=[names[i] for i in inj],
        load_p_kw=as_r([ld.p_kw for ld in feeder.loads]),
        load_q_kvar=as_r([ld.q_kvar for ld in feeder.loads]),
        source_nodes=as_i(src_idx),
        source_y_s=as_c(y_s),
        source_emf_v=as_c(e),
        current_names=current_names,
        current_matrix=as_c(np.array(rows).reshape(len(rows), len(index))),
    )
