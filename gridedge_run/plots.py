"""The comparison's figures (PNG, matplotlib's non-interactive Agg backend).

- `learning_curves`: test cost and voltage-violation share against training wall time, every trained method
  on one figure, with the references (rules, optimum) as horizontal lines;
- `voltage_envelopes`: per method, the lowest and highest node voltage of each phase over one test day,
  with the 0.95 / 1.05 pu limits;
- `device_power`: per method, the power of each device type over the same day, normalised by the type's
  total rating;
- `feeder_map`: the feeder's buses and lines at their coordinates, agents coloured by type and marked by
  phase.

Each function takes plain numbers (what `gridedge_run.compare` stores on disk), writes one file and returns
its path.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["device_power", "feeder_map", "learning_curves", "voltage_envelopes"]

PHASE_COLOURS = {1: "tab:red", 2: "tab:green", 3: "tab:blue"}
TYPE_COLOURS = {"battery": "tab:blue", "heatpump": "tab:orange", "generator": "tab:green"}
PHASE_MARKERS = {1: "o", 2: "s", 3: "^"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)  # atomic: a half-written figure never replaces a good one
    _pyplot().close(fig)
    return path


def _grid(n: int):
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def learning_curves(
    curves: dict[str, dict[str, list[float]]], references: dict[str, dict[str, float]], path: Path, title: str = ""
) -> Path:
    """curves: method -> {"wall_s", "cost", "violation_share"} lists (periodic test evaluations);
    references: method -> {"cost", "violation_share"} (rules and optimum, evaluated on the same days)."""
    plt = _pyplot()
    fig, (ax_cost, ax_viol) = plt.subplots(1, 2, figsize=(12, 4.5))
    for method, c in curves.items():
        if not c["wall_s"]:
            continue
        minutes = np.asarray(c["wall_s"]) / 60.0
        ax_cost.plot(minutes, c["cost"], marker=".", label=method)
        ax_viol.plot(minutes, 100.0 * np.asarray(c["violation_share"]), marker=".", label=method)
    for i, (method, r) in enumerate(references.items()):
        style = {"color": f"C{(len(curves) + i) % 10}", "linestyle": "--", "linewidth": 1.0}
        ax_cost.axhline(r["cost"], label=f"{method} (reference)", **style)
        ax_viol.axhline(100.0 * r["violation_share"], label=f"{method} (reference)", **style)
    ax_viol.axhline(0.5, color="black", linestyle=":", linewidth=1.0, label="target 0.5 %")
    ax_cost.set(xlabel="training wall time, min", ylabel="test cost, $ per day (all agents)", title="Cost on test days")
    ax_viol.set(
        xlabel="training wall time, min",
        ylabel="node-steps outside 0.95-1.05 pu, %",
        title="Voltage violations on test days",
    )
    ax_viol.set_yscale("symlog", linthresh=0.1)
    ax_viol.legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def voltage_envelopes(
    traces: dict[str, dict],
    node_phase: list[int],
    v_limits: tuple[float, float],
    step_hours: float,
    path: Path,
    title: str = "",
) -> Path:
    """traces: method -> {"v_mag_pu": [T, n] array}; node_phase: phase (1-3) of each node."""
    plt = _pyplot()
    rows, cols = _grid(len(traces))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), sharex=True, sharey=True, squeeze=False)
    phase = np.asarray(node_phase)
    for ax, (method, tr) in zip(axes.flat, traces.items(), strict=False):
        v = np.asarray(tr["v_mag_pu"])
        hours = np.arange(v.shape[0]) * step_hours
        for ph in (1, 2, 3):
            cols_ph = phase == ph
            if not cols_ph.any():
                continue
            lo, hi = v[:, cols_ph].min(axis=1), v[:, cols_ph].max(axis=1)
            ax.fill_between(hours, lo, hi, color=PHASE_COLOURS[ph], alpha=0.3, label=f"phase {'abc'[ph - 1]}")
        for limit in v_limits:
            ax.axhline(limit, color="black", linestyle="--", linewidth=0.8)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("hour of day")
    for ax in axes[:, 0]:
        ax.set_ylabel("voltage, pu (min-max over nodes)")
    for ax in list(axes.flat)[len(traces) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title or "Per-phase voltage envelopes over a test day (dashed: limits)")
    return _save(fig, path)


def device_power(
    traces: dict[str, dict],
    type_slices: dict[str, tuple[int, int]],
    type_rating_kw: dict[str, float],
    step_hours: float,
    path: Path,
    title: str = "",
) -> Path:
    """traces: method -> {"p_kw": [T, N] array}; type_slices: type -> (start, stop) on the agent axis;
    type_rating_kw: type -> the sum of its agents' rated power (p_max_kw)."""
    plt = _pyplot()
    rows, cols = _grid(len(traces))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), sharex=True, sharey=True, squeeze=False)
    for ax, (method, tr) in zip(axes.flat, traces.items(), strict=False):
        p = np.asarray(tr["p_kw"])
        hours = np.arange(p.shape[0]) * step_hours
        for name, (start, stop) in type_slices.items():
            if stop > start:
                ax.plot(
                    hours, p[:, start:stop].sum(axis=1) / type_rating_kw[name], color=TYPE_COLOURS.get(name), label=name
                )
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("hour of day")
    for ax in axes[:, 0]:
        ax.set_ylabel("power / rated power (+ consumes)")
    for ax in list(axes.flat)[len(traces) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title or "Device power by type over a test day, normalised by the type's total rating")
    return _save(fig, path)


def feeder_map(
    bus_xy: dict[str, tuple[float, float]],
    edges: list[tuple[str, str]],
    agent_bus: list[str],
    agent_phase: list[int],
    agent_type: list[str],
    path: Path,
    title: str = "",
) -> Path:
    """Buses at their coordinates, lines between them, agents coloured by type and marked by phase; agents at
    the same bus are spread on a small circle around it so that they stay visible."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 8))
    for a, b in edges:
        if a in bus_xy and b in bus_xy:
            (xa, ya), (xb, yb) = bus_xy[a], bus_xy[b]
            ax.plot([xa, xb], [ya, yb], color="lightgrey", linewidth=1.0, zorder=1)
    xy = np.array(list(bus_xy.values()))
    ax.scatter(xy[:, 0], xy[:, 1], s=6, color="grey", zorder=2)
    span = float(np.ptp(xy, axis=0).max()) if len(xy) > 1 else 1.0
    radius = 0.012 * span
    at_bus: dict[str, int] = {}
    counts: dict[str, int] = {}
    for bus in agent_bus:
        counts[bus] = counts.get(bus, 0) + 1
    points: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for bus, ph, kind in zip(agent_bus, agent_phase, agent_type, strict=True):
        if bus not in bus_xy:
            continue
        k = at_bus.get(bus, 0)
        at_bus[bus] = k + 1
        angle = 2 * math.pi * k / counts[bus]
        x, y = bus_xy[bus]
        points.setdefault((kind, ph), []).append((x + radius * math.cos(angle), y + radius * math.sin(angle)))
    for (kind, ph), pts in sorted(points.items()):
        arr = np.array(pts)
        ax.scatter(
            arr[:, 0],
            arr[:, 1],
            s=10,
            color=TYPE_COLOURS.get(kind),
            marker=PHASE_MARKERS.get(ph, "o"),
            label=f"{kind}, phase {'abc'[ph - 1]}",
            zorder=3,
            linewidths=0,
        )
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, loc="best", markerscale=1.5)
    ax.set_title(title or "Feeder and agents (colour: device type, marker: phase)")
    return _save(fig, path)
