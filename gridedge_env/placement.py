"""Where the agents sit: per-node spot load, the hosting rule, and seeded placement of agents on load nodes.

Pure functions over a compiled feeder; no randomness beyond the ``torch.Generator`` passed in. The functional
core (`gridedge_env.core`) calls them once in `make_sim`.

Rules (``docs/simulator.md`` states them with examples):

- **Load nodes and their spot load.** Every feeder load is split over the phase nodes it is wired to, in the
  same way the power flow splits its power over its branches: a single-phase wye load puts all of its spot
  kW on its phase node; a three-phase wye load one third on each phase node; a delta load splits each
  phase-to-phase branch's share equally between the two nodes of that branch (so a single-phase delta load
  puts half on each of its two nodes). Neutral and ground conductors get nothing. The result is the
  *spot kW of each load node*; the power flow's injection nodes are exactly these nodes.
- **Hosting rule.** A feeder hosts at most ``floor(total spot kW / min_spot_kw_per_agent)`` agents (default
  one agent per kW of spot load: IEEE-13 3,466, IEEE-34 1,769, IEEE-123 3,490, IEEE-8500 10,773). More is a
  ``ValueError``.
- **Counts per node** are proportional to the node's spot kW by *systematic sampling*: with weights ``w_j``
  (summing to 1) and one uniform offset ``u``, node ``j`` gets the number of points ``(u + k) / N``,
  ``k = 0..N-1``, that fall in its slice of the cumulative weights. Each node gets ``floor(N w_j)`` or
  ``ceil(N w_j)`` agents, the total is exactly ``N``, and the expected count is exactly ``N w_j``.
- **Which agent goes where**: a seeded random permutation of all agents over the node slots, so every
  device type is spread over the feeder in proportion to spot load too (in expectation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from gridedge_env.powerflow import CompiledFeeder

__all__ = [
    "FULL_SIZE_SPOT_KW_PER_AGENT",
    "device_scale",
    "hosting_capacity",
    "load_node_shares",
    "node_spot_kw",
    "place_agents",
    "split_mix",
    "systematic_counts",
]


def load_node_shares(compiled: CompiledFeeder) -> torch.Tensor:
    """Share of every feeder load's power that falls on each load node.

    A wye load puts ``1 / phases`` on each of its phase nodes; a delta load splits each phase-pair branch's
    ``1 / branches`` equally between the branch's two nodes. Neutral and ground conductors get nothing.

    Args:
        compiled: A feeder compiled with the default injection nodes (every node a load is wired to).

    Returns:
        [L, J] float64 CPU tensor (rows sum to 1), columns aligned with ``compiled.injection_node_names``.

    Raises:
        ValueError: A load wired to a node that is not an injection node.
    """
    column = {name.lower(): j for j, name in enumerate(compiled.injection_node_names)}
    shares = torch.zeros(compiled.n_loads, len(column), dtype=torch.float64)

    def add(li: int, bus: str, node: int, share: float) -> None:
        key = f"{bus}.{node}".lower()
        if key not in column:
            raise ValueError(
                f"load {compiled.feeder.loads[li].name!r} is wired to {key}, which is not a load "
                "node of the compiled feeder (compile it with the default injection nodes)"
            )
        shares[li, column[key]] += share

    for li, load in enumerate(compiled.feeder.loads):
        nodes, bus = load.terminal.nodes, load.terminal.bus
        if load.conn == "wye":
            for node in nodes[: load.phases]:
                add(li, bus, node, 1.0 / load.phases)
        else:
            pairs = (
                [(nodes[0], nodes[1])]
                if load.phases == 1
                else [(nodes[k], nodes[(k + 1) % len(nodes)]) for k in range(len(nodes))]
            )
            for a, b in pairs:
                for node in (a, b):
                    if node:
                        add(li, bus, node, 0.5 / len(pairs))
    return shares


def node_spot_kw(compiled: CompiledFeeder) -> torch.Tensor:
    """Spot load of every injection (load) node, kW.

    Args:
        compiled: A feeder compiled with the default injection nodes (every node a load is wired to).

    Returns:
        [J] float64 CPU tensor, aligned with ``compiled.injection_node_names``; sums to the feeder's total
        spot kW (loads with negative kW, if any, count with their absolute value).
    """
    load_kw = compiled.load_p_kw.detach().cpu().to(torch.float64).abs()
    return load_kw @ load_node_shares(compiled)


def hosting_capacity(total_spot_kw: float, min_spot_kw_per_agent: float) -> int:
    """Largest number of agents a feeder hosts: ``floor(total_spot_kw / min_spot_kw_per_agent)``."""
    return int(math.floor(total_spot_kw / min_spot_kw_per_agent + 1e-9))


#: Spot load per agent (kW) down to which devices keep the sizes `gridedge_env.devices` draws (household
#: devices: batteries of 3-7 kW, generators of 3-10 kW, heat pumps for whole buildings). The shipped tasks
#: give each agent about 3.5 kW (IEEE-123, 1,000 agents: 3.49; IEEE-13, 1,000 agents: 3.47).
FULL_SIZE_SPOT_KW_PER_AGENT = 3.0


def device_scale(total_spot_kw: float, n_agents: int) -> float:
    """Size of every agent's device relative to the drawn one: ``min(1, (total_spot_kw / n_agents) /
    FULL_SIZE_SPOT_KW_PER_AGENT)``.

    Where agents are denser than one per 3 kW of spot load (IEEE-8500 with 10,000 agents: 1.08 kW each, the
    homes of its service transformers), each agent is a smaller share of the homes' load, so its device's
    power and energy ratings shrink in proportion and the agents together stay sized to the feeder's loads.
    """
    return min(1.0, total_spot_kw / n_agents / FULL_SIZE_SPOT_KW_PER_AGENT)


def split_mix(n_agents: int, mix: Sequence[float], names: Sequence[str]) -> dict[str, int]:
    """Split ``n_agents`` over device types by the fractions ``mix`` (largest-remainder rounding).

    Args:
        n_agents: Total number of agents (>= 1).
        mix: One non-negative weight per type (normalised here; need not sum to 1).
        names: Type names, aligned with ``mix``.

    Returns:
        ``{type: count}`` with counts summing to ``n_agents``; ties go to the earlier type.

    Raises:
        ValueError: Wrong length, a negative or non-finite weight, or all weights zero.
    """
    if len(mix) != len(names):
        raise ValueError(f"mix must have one weight per device type {list(names)}, got {list(mix)}")
    weights = [float(x) for x in mix]
    if any(not math.isfinite(x) or x < 0 for x in weights) or sum(weights) <= 0:
        raise ValueError(f"mix must be finite, non-negative weights with a positive sum, got {list(mix)}")
    total = sum(weights)
    exact = [n_agents * x / total for x in weights]
    counts = [int(math.floor(e)) for e in exact]
    left = n_agents - sum(counts)
    order = sorted(range(len(names)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[:left]:
        counts[k] += 1
    return dict(zip(names, counts, strict=True))


def systematic_counts(weights: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Allocate ``n`` items over bins in proportion to ``weights`` by systematic sampling.

    Args:
        weights: [J] non-negative, positive sum.
        n: Number of items (>= 0).
        generator: Source of the one uniform offset.

    Returns:
        [J] int64 counts summing to ``n``; bin ``j`` gets ``floor(n w_j)`` or ``ceil(n w_j)`` (``w`` the
        normalised weights) and ``n w_j`` in expectation.
    """
    w = weights.to(torch.float64) / weights.to(torch.float64).sum()
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    edges = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(w, 0)]) * n
    edges[-1] = float(n)  # no rounding drift at the end
    # number of points u + k (k integer) strictly below each edge: ceil(edge - u)
    below = torch.ceil(edges - u).clamp(0, n).to(torch.int64)
    return below[1:] - below[:-1]


def place_agents(spot_kw: torch.Tensor, n_agents: int, generator: torch.Generator) -> torch.Tensor:
    """Node of every agent: counts by :func:`systematic_counts`, then a random permutation of the agents.

    Args:
        spot_kw: [J] spot load of each load node, kW.
        n_agents: Number of agents N.
        generator: Source of randomness (one offset, then one permutation).

    Returns:
        [N] int64 index into the load nodes (``0..J-1``) for agents ``0..N-1``.
    """
    counts = systematic_counts(spot_kw, n_agents, generator)
    slots = torch.repeat_interleave(torch.arange(spot_kw.shape[0]), counts)
    perm = torch.randperm(n_agents, generator=generator)
    return slots[perm]
