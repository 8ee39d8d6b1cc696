"""Primitive admittance matrices of feeder elements (siemens), following OpenDSS's element models.

Each function returns `(yprim, conductors)`: `yprim` is the element's complex admittance over its
conductors and `conductors` lists `(bus, node)` for each row (node 0 = ground). `assemble_ybus` adds
them into the system admittance matrix over the feeder's nodes, dropping ground (sparse:
`assemble_ybus_sparse`).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse

from gridedge_env.network.model import Capacitor, Feeder, Line, Source, Terminal, Transformer

Conductors = list[tuple[str, int]]


def _conductors(*terminals: Terminal) -> Conductors:
    return [(t.bus, n) for t in terminals for n in t.nodes]


def line_yprim(line: Line, frequency_hz: float) -> tuple[np.ndarray, Conductors]:
    """Pi model: series Z = (R + jX) * length, shunt j*omega*C*length split equally between the ends."""
    z = (np.asarray(line.r_ohm_per_km) + 1j * np.asarray(line.x_ohm_per_km)) * line.length_km
    y_series = np.linalg.inv(z)
    y_shunt_half = 1j * 2 * math.pi * frequency_hz * np.asarray(line.c_nf_per_km) * 1e-9 * line.length_km / 2
    yprim = np.block([[y_series + y_shunt_half, -y_series], [-y_series, y_series + y_shunt_half]])
    return yprim, _conductors(line.terminal1, line.terminal2)


def source_yprim(source: Source) -> tuple[np.ndarray, Conductors]:
    """Norton admittance of the source's sequence impedances (Zs = (2 Z1 + Z0)/3, Zm = (Z0 - Z1)/3)."""
    z1 = source.r1_ohm + 1j * source.x1_ohm
    z0 = source.r0_ohm + 1j * source.x0_ohm
    zs, zm = (2 * z1 + z0) / 3, (z0 - z1) / 3
    z = np.full((3, 3), zm) + np.eye(3) * (zs - zm)
    return np.linalg.inv(z), [(source.bus, n) for n in source.nodes]


def capacitor_yprim(cap: Capacitor, frequency_hz: float) -> tuple[np.ndarray, Conductors]:
    """Shunt capacitor: per-unit-branch susceptance kvar/(branches) / V_branch^2 (OpenDSS conventions)."""
    nodes = cap.terminal.nodes
    n = len(nodes)
    if cap.conn == "wye":
        phases = sum(1 for x in nodes if x) if n > 1 else 1
        # OpenDSS: kV is line-to-line for 2+ phases, else the can's own rating
        v_branch = cap.kv * 1e3 / (math.sqrt(3.0) if phases > 1 else 1.0)
        b = cap.kvar * 1e3 / phases / v_branch**2
        yprim = np.zeros((n, n), complex)
        for k in range(n):
            if nodes[k]:
                yprim[k, k] = 1j * b
        return yprim, _conductors(cap.terminal)
    # delta: branch k between conductor k and k+1 (one branch between the two conductors for 1 phase)
    pairs = [(0, 1)] if n == 2 else [(k, (k + 1) % n) for k in range(n)]
    b = cap.kvar * 1e3 / len(pairs) / (cap.kv * 1e3) ** 2
    yprim = np.zeros((n, n), complex)
    for i, j in pairs:
        yprim[[i, j], [i, j]] += 1j * b
        yprim[i, j] -= 1j * b
        yprim[j, i] -= 1j * b
    return yprim, _conductors(cap.terminal)


def _delta_direction(t: Transformer) -> int:
    """OpenDSS's DeltaDirection: +1 wires delta coil k to the next phase, -1 to the previous one."""
    first, second = t.windings[0], t.windings[1]
    if first.conn == second.conn:
        return 1
    high = first if first.kv >= second.kv else second
    return (-1 if t.hv_leads_lv else 1) if high.conn == "wye" else (1 if t.hv_leads_lv else -1)


def _rotate(k: int, direction: int, phases: int) -> int:
    """OpenDSS's RotatePhases, 0-based: the conductor delta coil k ends on (a two-phase delta is open: its
    coils end on the third conductor)."""
    r = k + direction
    if phases > 2:
        return r % phases
    return 2 if r < 0 else r


def transformer_yprim(t: Transformer) -> tuple[np.ndarray, Conductors]:
    """A transformer of two or three windings as OpenDSS models it (`Transformer.pas`), phase by phase.

    The short-circuit impedances (winding %R, and %XHL, %XHT, %XLT, on winding 1's kVA per phase) give
    the windings' admittance on a one-volt basis, `A^T ZB^-1 A`; the magnetising branch (%noloadloss,
    %imag) adds a shunt on winding 2. Dividing by the turn voltages (rated coil kV times tap) refers both to
    each coil's two ends: a wye coil lies between its phase conductor and the terminal's neutral, a delta
    coil between phase conductor k and the next or previous one (`_delta_direction`); a single-phase coil
    between the terminal's two conductors. OpenDSS's anti-float susceptance sits at both ends of every
    coil, and once more on the neutral of a wye winding.
    """
    nph, nw = t.phases, len(t.windings)
    nc = nph + 1  # conductors per terminal
    va_1ph = t.windings[0].kva * 1e3 / nph
    r = [w.r_percent / 100 for w in t.windings]
    xsc = [t.xhl_percent / 100, t.xht_percent / 100, t.xlt_percent / 100][: nw * (nw - 1) // 2]
    zb = np.zeros((nw - 1, nw - 1), complex)
    for i in range(nw - 1):
        zb[i, i] = (r[0] + r[i + 1] + 1j * xsc[i]) / va_1ph
    k = nw - 1
    for i in range(nw - 1):
        for j in range(i + 1, nw - 1):
            zb[i, j] = zb[j, i] = (zb[i, i] + zb[j, j] - (r[i + 1] + r[j + 1] + 1j * xsc[k]) / va_1ph) / 2
            k += 1
    a = np.zeros((nw - 1, nw))
    a[:, 0] = -1.0
    a[np.arange(nw - 1), np.arange(1, nw)] = 1.0
    y_1volt = a.T @ np.linalg.inv(zb) @ a
    y_1volt[1, 1] += (t.noloadloss_percent / 100 - 1j * t.imag_percent / 100) * va_1ph
    v_base = np.array([w.kv * 1e3 / (math.sqrt(3.0) if (w.conn == "wye" and nph > 1) else 1.0) for w in t.windings])
    turns = np.zeros((nw, 2 * nw))
    for i, w in enumerate(t.windings):
        turns[i, 2 * i], turns[i, 2 * i + 1] = 1.0 / (v_base[i] * w.tap_pu), -1.0 / (v_base[i] * w.tap_pu)
    y_term = turns.T @ y_1volt @ turns
    y_ppm = -t.ppm_antifloat * 1e-6 / (v_base**2 / va_1ph) / 2.0
    y_term[np.arange(2 * nw), np.arange(2 * nw)] += 1j * np.repeat(y_ppm, 2)
    direction = _delta_direction(t)
    yprim = np.zeros((nw * nc, nw * nc), complex)
    for k in range(nph):
        ends = []  # the two conductors of phase k's coil on each winding
        for w, wdg in enumerate(t.windings):
            base = w * nc
            if nph == 1:
                ends += [base, base + 1]
            elif wdg.conn == "wye":
                ends += [base + k, base + nph]
            else:
                ends += [base + k, base + _rotate(k, direction, nph)]
        yprim[np.ix_(ends, ends)] += y_term
    for w, wdg in enumerate(t.windings):
        if wdg.conn == "wye" and t.ppm_antifloat:  # an open neutral is tied down once more
            yprim[w * nc + nph, w * nc + nph] += 1j * y_ppm[w]
    return yprim, _conductors(*(w.terminal for w in t.windings))


def element_yprims(feeder: Feeder) -> list[tuple[str, np.ndarray, Conductors]]:
    """`(element name, yprim, conductors)` of every element that enters the system admittance matrix."""
    out = [("Vsource.source", *source_yprim(feeder.source))]
    out += [(f"Line.{ln.name}", *line_yprim(ln, feeder.frequency_hz)) for ln in feeder.lines]
    out += [(f"Transformer.{t.name}", *transformer_yprim(t)) for t in feeder.transformers]
    out += [(f"Capacitor.{c.name}", *capacitor_yprim(c, feeder.frequency_hz)) for c in feeder.capacitors]
    return out


def node_index(feeder: Feeder) -> dict[tuple[str, int], int]:
    """(bus, node) -> row of the system matrices, for every non-ground node of the feeder."""
    return {(b.name, n): i for i, (b, n) in enumerate((b, n) for b in feeder.buses for n in b.nodes)}


def assemble_ybus_sparse(feeder: Feeder, yprims=None) -> scipy.sparse.csc_matrix:
    """System admittance matrix (siemens, sparse) over the feeder's nodes, source Norton admittance included;
    `yprims` (from `element_yprims`) saves computing the element matrices again."""
    index = node_index(feeder)
    rows, cols, values = [], [], []
    for _, yprim, conductors in yprims if yprims is not None else element_yprims(feeder):
        at = np.array([index.get(c, -1) if c[1] else -1 for c in conductors])
        keep = np.flatnonzero(at >= 0)
        rows.append(np.repeat(at[keep], len(keep)))
        cols.append(np.tile(at[keep], len(keep)))
        values.append(yprim[np.ix_(keep, keep)].ravel())
    n = len(index)
    # duplicate entries are summed
    return scipy.sparse.csc_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))


def assemble_ybus(feeder: Feeder) -> np.ndarray:
    """System admittance matrix (siemens, dense) over the feeder's nodes, source Norton admittance included."""
    return assemble_ybus_sparse(feeder).toarray()
