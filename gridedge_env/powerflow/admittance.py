"""Primitive admittance matrices of feeder elements (siemens), following OpenDSS's element models.

Each function returns `(yprim, conductors)`: `yprim` is the element's complex admittance over its
conductors and `conductors` lists `(bus, node)` for each row (node 0 = ground). `assemble_ybus` adds
them into the system admittance matrix over the feeder's nodes, dropping ground.
"""

from __future__ import annotations

import math

import numpy as np

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


def transformer_yprim(t: Transformer) -> tuple[np.ndarray, Conductors]:
    """Two-winding transformer as OpenDSS models it: one coil per phase and winding.

    The short-circuit impedance (sum of winding %R, and %XHL, on winding 1's kVA) gives a 2x2 coil
    admittance on a one-volt basis; dividing by the turn voltages (rated coil kV times tap) refers it to
    each coil. A wye coil lies between its phase conductor and the terminal's neutral conductor; a delta
    coil between consecutive phase conductors.
    """
    nph = t.phases
    nc = nph + 1  # conductors per terminal
    va_per_phase = t.windings[0].kva * 1e3 / nph
    z_1volt = (sum(w.r_percent for w in t.windings) / 100 + 1j * t.xhl_percent / 100) / va_per_phase
    y = 1 / z_1volt
    y_1volt = np.array([[y, -y], [-y, y]])
    v_turn = np.array([
        w.kv * 1e3 / (math.sqrt(3.0) if (w.conn == "wye" and nph > 1) else 1.0) * w.tap_pu for w in t.windings
    ])
    y_coil = y_1volt / np.outer(v_turn, v_turn)
    yprim = np.zeros((2 * nc, 2 * nc), complex)
    for k in range(nph):
        ends = []  # (from conductor, to conductor) of phase k's coil on each winding
        for w, wdg in enumerate(t.windings):
            base = w * nc
            if wdg.conn == "wye":
                ends.append((base + k, base + nph))
            else:
                # OpenDSS wires delta coil k from phase conductor k back to conductor k-1
                ends.append((base + k, base + (k - 1) % nph if nph > 1 else base + 1))
        incidence = np.zeros((2, 2 * nc))
        for w, (a, b) in enumerate(ends):
            incidence[w, a] += 1.0
            incidence[w, b] -= 1.0
        yprim += incidence.T @ y_coil @ incidence
    if t.ppm_antifloat:
        # OpenDSS ties each winding to ground through a tiny susceptance (ppm of the winding's VA per phase
        # at its coil voltage) so that no winding floats. The split below (half on each wye phase conductor,
        # (phases+1)/2 on the neutral; the whole on each delta phase conductor) reproduces OpenDSS's YPrim,
        # which tests/test_network.py checks element by element.
        for w, wdg in enumerate(t.windings):
            b = t.ppm_antifloat * 1e-6 * (wdg.kva * 1e3 / nph) / (v_turn[w] / wdg.tap_pu) ** 2
            for k in range(nph):
                yprim[w * nc + k, w * nc + k] -= 1j * b * (0.5 if wdg.conn == "wye" else 1.0)
            if wdg.conn == "wye":
                yprim[w * nc + nph, w * nc + nph] -= 1j * b * (nph + 1) / 2
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


def assemble_ybus(feeder: Feeder) -> np.ndarray:
    """System admittance matrix (siemens) over the feeder's nodes, source Norton admittance included."""
    index = node_index(feeder)
    y = np.zeros((len(index), len(index)), complex)
    for _, yprim, conductors in element_yprims(feeder):
        rows = np.array([index.get(c, -1) if c[1] else -1 for c in conductors])
        keep = rows >= 0
        y[np.ix_(rows[keep], rows[keep])] += yprim[np.ix_(keep, keep)]
    return y
