"""The figures of comparisons and runs (PNG, matplotlib's non-interactive Agg backend).

- `learning_curves`: cost and voltage-violation share on validation days against training wall time, every
  trained method on one figure (median over seeds, interquartile band), with the references (rules, optimum)
  on the same days as horizontal lines;
- `cost_vs_violation`: test cost against violation share, one marker per method and seed;
- `voltage_envelopes`: the lowest and highest node voltage of each phase over one test day, one panel per
  phase, methods overlaid, with the 0.95 / 1.05 pu limits;
- `device_power`: per method, the power of each device type over the same day, normalised by the type's
  total rating, with the price beside it;
- `feeder_map`: the feeder's buses and lines at their coordinates, agents coloured by type and marked by
  phase;
- `multipliers`: a primal-dual run's Lagrange multipliers (mean and maximum per device type and of the
  network) over training (``multipliers.png`` in the run directory).

Each function takes plain numbers (what `gridedge_run.compare` stores on disk), writes one file and returns
its path. ``stamp`` (date, machine, torch version, commit) is printed under the figure and stored in the PNG's
metadata.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["cost_vs_violation", "device_power", "feeder_map", "learning_curves", "multipliers", "voltage_envelopes"]

PHASE_COLOURS = {1: "tab:red", 2: "tab:green", 3: "tab:blue"}
TYPE_COLOURS = {"battery": "tab:blue", "heatpump": "tab:orange", "generator": "tab:green"}
PHASE_MARKERS = {1: "o", 2: "s", 3: "^"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, stamp: str = "") -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    if stamp:
        fig.text(0.5, -0.01, stamp, ha="center", va="top", fontsize=7, color="dimgrey")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", metadata={"Description": stamp} if stamp else None)
    tmp.replace(path)  # atomic: a half-written figure never replaces a good one
    _pyplot().close(fig)
    return path


def _grid(n: int):
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def _method_colours(methods) -> dict[str, str]:
    return {m: f"C{i % 10}" for i, m in enumerate(methods)}


def learning_curves(
    curves: dict[str, dict[int, dict[str, list[float]]]],
    references: dict[str, dict],
    path: Path,
    title: str = "",
    stamp: str = "",
) -> Path:
    """curves: method -> seed -> {"wall_s", "cost", "violation_share"} lists (periodic evaluations on
    validation days); references: method -> {"cost", "violation_share"} on the same days (rules, optimum).

    Each seed's curve is interpolated onto a common time grid (up to the shortest seed's last evaluation);
    the line is the median over seeds and the band the interquartile range. The violation axis is linear,
    from 0 %."""
    plt = _pyplot()
    fig, (ax_cost, ax_viol) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = _method_colours(list(curves) + list(references))
    for method, by_seed in curves.items():
        seeds = [c for c in by_seed.values() if c["wall_s"]]
        if not seeds:
            continue
        end = min(c["wall_s"][-1] for c in seeds)
        start = max(c["wall_s"][0] for c in seeds)
        grid = np.linspace(start, end, 50) if end > start else np.array([end])
        for ax, key, scale in ((ax_cost, "cost", 1.0), (ax_viol, "violation_share", 100.0)):
            ys = np.stack([np.interp(grid, c["wall_s"], c[key]) for c in seeds]) * scale
            lo, mid, hi = np.percentile(ys, [25, 50, 75], axis=0)
            ax.plot(
                grid / 60.0,
                mid,
                color=colours[method],
                marker="o" if grid.size == 1 else None,  # a single evaluation is a point, not a line
                label=f"{method} (median of {len(seeds)} seeds)",
            )
            if len(seeds) > 1:
                ax.fill_between(grid / 60.0, lo, hi, color=colours[method], alpha=0.25, linewidth=0)
    for method, result in references.items():
        style = {"color": colours[method], "linestyle": "--", "linewidth": 1.0}
        for ax, key, scale in ((ax_cost, "cost", 1.0), (ax_viol, "violation_share", 100.0)):
            ax.axhline(scale * result[key], label=f"{method} (reference)", **style)
    ax_viol.axhline(0.5, color="black", linestyle=":", linewidth=1.0, label="target 0.5 %")
    ax_cost.set(
        xlabel="training wall time, min", ylabel="cost, $ per day (all agents)", title="Cost on validation days"
    )
    ax_viol.set(
        xlabel="training wall time, min",
        ylabel="node-steps outside 0.95-1.05 pu, %",
        title="Voltage violations on validation days",
    )
    ax_viol.set_ylim(bottom=0.0)
    ax_viol.legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title)
    return _save(fig, path, stamp)


def cost_vs_violation(per_seed: dict[str, list[dict]], path: Path, title: str = "", stamp: str = "") -> Path:
    """per_seed: method -> one {"cost", "violation_share"} per seed; one marker per method and seed (the
    Pareto view: down and to the left is better)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    colours = _method_colours(per_seed)
    markers = "osD^vP*X<>"
    for i, (method, rows) in enumerate(per_seed.items()):
        ax.scatter(
            [100.0 * r["violation_share"] for r in rows],
            [r["cost"] for r in rows],
            color=colours[method],
            marker=markers[i % len(markers)],
            s=36,
            alpha=0.8,
            label=method,
        )
    ax.set(xlabel="node-steps outside 0.95-1.05 pu, %", ylabel="test cost, $ per day (all agents)")
    ax.set_xlim(left=0.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Test cost against voltage violations (one marker per method and seed)", fontsize=10)
    return _save(fig, path, stamp)


def voltage_envelopes(
    traces: dict[str, dict],
    node_phase: list[int],
    v_limits: tuple[float, float],
    step_hours: float,
    path: Path,
    title: str = "",
    stamp: str = "",
) -> Path:
    """traces: method -> {"v_mag_pu": [T, n] array}; node_phase: phase (1-3) of each node. One panel per
    phase, each method's band from the lowest to the highest node voltage of that phase at every step."""
    plt = _pyplot()
    phase = np.asarray(node_phase)
    phases = [ph for ph in (1, 2, 3) if (phase == ph).any()]
    fig, axes = plt.subplots(1, len(phases), figsize=(4.6 * len(phases), 3.6), sharey=True, squeeze=False)
    colours = _method_colours(traces)
    for ax, ph in zip(axes[0], phases, strict=True):
        for method, tr in traces.items():
            v = np.asarray(tr["v_mag_pu"])[:, phase == ph]
            hours = np.arange(v.shape[0]) * step_hours
            ax.fill_between(hours, v.min(axis=1), v.max(axis=1), color=colours[method], alpha=0.3, label=method)
        for limit in v_limits:
            ax.axhline(limit, color="black", linestyle="--", linewidth=0.8)
        ax.set_title(f"phase {'abc'[ph - 1]}", fontsize=9)
        ax.set_xlabel("hour of day")
    axes[0, 0].set_ylabel("voltage, pu (min-max over the phase's nodes)")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title or "Per-phase voltage envelopes over a test day (dashed: limits)")
    return _save(fig, path, stamp)


def device_power(
    traces: dict[str, dict],
    type_slices: dict[str, tuple[int, int]],
    type_rating_kw: dict[str, float],
    step_hours: float,
    path: Path,
    title: str = "",
    stamp: str = "",
) -> Path:
    """traces: method -> {"p_kw": [T, N] array, optionally "price_per_kwh": [T]}; type_slices: type ->
    (start, stop) on the agent axis; type_rating_kw: type -> the sum of its agents' rated power (p_max_kw).
    The price is drawn on a second axis of every panel."""
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
        ax.set_ylim(-1.05, 1.05)
        if "price_per_kwh" in tr:
            price_ax = ax.twinx()
            price_ax.step(
                hours,
                np.asarray(tr["price_per_kwh"]),
                where="post",
                color="black",
                linewidth=0.8,
                linestyle=":",
                label="price",
            )
            price_ax.set_ylim(bottom=0.0)
            price_ax.set_ylabel("price, $/kWh", fontsize=7)
            price_ax.tick_params(labelsize=7)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("hour of day")
    for ax in axes[:, 0]:
        ax.set_ylabel("power / rated power (+ consumes)")
    for ax in list(axes.flat)[len(traces) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title or "Device power by type over a test day, normalised by the type's total rating (dotted: price)")
    return _save(fig, path, stamp)


def feeder_map(
    bus_xy: dict[str, tuple[float, float]],
    edges: list[tuple[str, str]],
    agent_bus: list[str],
    agent_phase: list[int],
    agent_type: list[str],
    path: Path,
    title: str = "",
    stamp: str = "",
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
    return _save(fig, path, stamp)


def multipliers(rows: list[dict], path: Path, title: str = "") -> Path:
    """The Lagrange multipliers over training: ``rows`` are metrics.csv rows (``iteration``, ``wall_s`` and
    ``<group>_multiplier_mean``/``_max`` for the device types and ``voltage``); the device types on the left
    ($ per kW-step or K-step), the network on the right ($ per pu-step); mean solid, maximum dashed. An axis is
    logarithmic when all its values are positive and span more than a factor 100, else linear."""
    plt = _pyplot()
    fig, (ax_dev, ax_net) = plt.subplots(1, 2, figsize=(12, 4.5))
    minutes = np.asarray([float(r["wall_s"]) for r in rows]) / 60.0
    groups = [g for g in (*TYPE_COLOURS, "voltage") if rows and f"{g}_multiplier_mean" in rows[0]]
    for group in groups:
        ax = ax_net if group == "voltage" else ax_dev
        colour = TYPE_COLOURS.get(group, "black")
        for stat, style in (("mean", "-"), ("max", "--")):
            values = [float(r[f"{group}_multiplier_{stat}"]) for r in rows]
            ax.plot(minutes, values, linestyle=style, color=colour, label=f"{group} {stat}")
    for ax in (ax_dev, ax_net):
        values = np.concatenate([line.get_ydata() for line in ax.get_lines()]) if ax.get_lines() else np.zeros(1)
        if values.min() > 0 and values.max() > 100 * values.min():
            ax.set_yscale("log")
        ax.set_xlabel("training wall time, min")
        ax.legend(fontsize=7, loc="best")
    ax_dev.set(ylabel="$ per kW-step (battery, generator) or K-step (heat pump)", title="Device")
    ax_net.set(ylabel="$ per pu-step", title="Network (per node and time of day)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
