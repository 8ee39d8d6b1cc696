"""The functional simulator core: pure, batched, differentiable ``reset`` / ``step`` over an immutable state.

``make_sim(**cfg)`` compiles a feeder, places the agents and samples their device parameters once; then

- ``sim.reset(batch_size, seed, split) -> State`` draws everything random of ``batch_size`` one-day
  episodes: the days (from the split), the household load shapes, and the initial device states;
- ``sim.step(state, actions) -> StepResult`` is a deterministic function of the state and the actions
  ``[B, N]``: it steps the three device types (vectorised over agents), sums device power and rooftop PV per
  load node, solves the batched three-phase power flow (warm-started from the previous step), and returns
  the next state, per-agent costs and device violations, per-node voltage violations, local observations,
  and the power-flow diagnostics.

Everything is differentiable w.r.t. the actions: the device models by autograd, the power flow by its
implicit-function-theorem backward. One ``backward()`` of a rollout's total gives the gradient w.r.t. every
action of every agent; ``step(..., detach_state=True)`` or :meth:`Sim.detach` cuts it between steps.

Spec (agents, observations, costs, calibration): ``docs/simulator.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gridedge_env import powerflow
from gridedge_env.devices import (
    DEVICE_TYPES,
    battery_power_limits,
    generator_output_limits,
    heatpump_comfort_limits,
    heatpump_cop,
    heatpump_heating,
    heatpump_response,
)
from gridedge_env.network import Feeder, load_feeder
from gridedge_env.placement import (
    device_scale,
    hosting_capacity,
    load_node_shares,
    node_spot_kw,
    place_agents,
    split_mix,
)
from gridedge_env.scenarios import (
    design_temperatures,
    draw_load_shapes,
    load_scenario_data,
    split_days,
    split_profiles,
)

__all__ = [
    "AGENT_TYPES",
    "check_device",
    "OBS_DIM",
    "OBS_NAMES",
    "OBS_SCALES",
    "FEEDER_CALIBRATION",
    "SimConfig",
    "Sim",
    "State",
    "StepResult",
    "make_sim",
    "action_bounds",
    "feasible_action_bounds",
    "heatpump_comfort_actions",
    "heatpump_target_actions",
    "cheap_and_dear_steps",
    "band_end_targets",
    "thermostat_actions",
    "builtin_actions",
    "THERMOSTAT_MARGIN_K",
    "sim_config_dict",
]

#: Device types in the order of the action/agent axis: all batteries, then heat pumps, then generators.
AGENT_TYPES: tuple[str, ...] = tuple(DEVICE_TYPES)

#: Observation features, the same layout for every agent type (``own_state`` and ``own_reference`` depend on
#: the type).
OBS_NAMES: tuple[str, ...] = (
    "time_sin",
    "time_cos",
    "price",
    "t_outdoor",
    "v_node",
    "node_load",
    "node_pv",
    "own_state",
    "own_reference",
    "rule_action",
    "action_low",
    "action_high",
)
OBS_DIM: int = len(OBS_NAMES)

#: Fixed scales of the observation features (see ``docs/simulator.md``).
OBS_SCALES: dict[str, float] = {
    "price_per_kwh": 0.40,  # price / 0.40 $/kWh: the summer peak rate maps to 1
    "t_outdoor_c": 20.0,  # outdoor temperature / 20 C
    "v_pu_centre": 1.0,  # (v - 1.0) / 0.05: the band edges 0.95 and 1.05 pu map to -1 and +1
    "v_pu_half_band": 0.05,
}

_DEFAULT_TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-6, 1e-5)}

#: The task's load and PV calibration (``docs/simulator.md``, Calibration), by feeder name: IEEE-123's for
#: every feeder, and IEEE-8500's own. With its regulator taps neutral IEEE-8500's long primary cannot carry
#: its own spot loads (0.78 pu at 1.0 times them, source 0.985 pu), and its homes sit behind
#: 10-50 kVA service transformers and triplex cables, so IEEE-123's 1.2 times spot load at the evening peak
#: and 3.5 kWp of PV per kW put it at 0.61-1.25 pu without any agent.
FEEDER_CALIBRATION: dict[str, dict[str, float]] = {
    "default": {"load_scale": 2.5, "pv_kwp_per_kw": 3.5},
    "ieee8500": {"load_scale": 1.0, "pv_kwp_per_kw": 0.5},
}


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines a simulator instance (``make_sim(**fields)``)."""

    feeder: str | Feeder = "ieee123"
    """A shipped feeder's name ("ieee13", "ieee34", "ieee123", "ieee8500"), a .json or .dss path, or a `Feeder`."""
    n_agents: int = 1000
    """Number of agents N (>= 1, at most the feeder's hosting capacity)."""
    mix: tuple[float, ...] = (0.4, 0.4, 0.2)
    """Shares of batteries, heat pumps and generators (largest-remainder rounding of N)."""
    step_minutes: int = 30
    """Step length: 15, 30 or 60 minutes; an episode is one day (96, 48 or 24 steps)."""
    seed: int = 0
    """Seed of the agent placement and the per-agent device parameters (episodes are seeded in `reset`)."""
    dtype: torch.dtype = torch.float64
    """torch.float64 (default) or torch.float32."""
    device: str = "cpu"
    """torch device of every tensor."""
    load_scale: float | None = None
    """Feeder load = spot kW x load_scale x mean of household shapes (None: FEEDER_CALIBRATION's, 2.5; IEEE-8500 1)."""
    households_per_load: int = 8
    """Household shapes drawn (and averaged) per feeder load and episode; more gives a smoother aggregate."""
    pv_kwp_per_kw: float | None = None
    """Rooftop PV per load node, kWp (DC) per kW of its spot load (None: FEEDER_CALIBRATION's, 3.5; IEEE-8500 0.5)."""
    source_v_pu: float | None = 0.985
    """Substation (source) voltage setpoint, pu; None keeps the feeder's own."""
    regulator_taps: str = "neutral"
    """"neutral": every voltage-regulator tap at 1.0 pu (no fixed boost); "feeder": the feeder's taps."""
    min_spot_kw_per_agent: float = 1.0
    """Hosting rule: at most one agent per this many kW of the feeder's total spot load."""
    net_metering: bool = True
    """True: exports are credited at the import (TOU) price; False: at the tariff's export price."""
    generator_ramp_limit: bool = True
    """Generators have ramp limits (False: unlimited ramping)."""
    generator_min_output: float = 0.15
    """Minimum stable output of every generator, fraction of its p_max_kw (0: generators can switch off)."""
    heatpump_sizing_margin: float = 0.25
    """Heat pumps cover their building's design heat loss (gain) at the design temperatures plus this share."""
    terminal_price_per_kwh: float = 0.5
    """Terminal condition: $ per kWh of stored energy (battery, building heat) below its initial value at day end."""
    v_min_pu: float = 0.95
    """Lower voltage limit, pu."""
    v_max_pu: float = 1.05
    """Upper voltage limit, pu."""
    pf_tol: float | None = None
    """Power-flow tolerance, pu (None: 1e-10 in float64, 1e-6 in float32)."""
    pf_max_iter: int = 100
    """Power-flow iteration limit per step; rows that hit it are flagged not converged."""
    pf_adjoint_tol: float | None = None
    """Relative tolerance of the power flow's backward adjoint (None: 1e-10 in float64, 1e-5 in float32)."""
    load_voltage_limits: bool = False
    """True: feeder loads switch law outside their vminpu/vmaxpu as OpenDSS's do (docs/powerflow.md)."""


# ----------------------------------------------------------------------------------------------------------
# State and step result
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """Immutable state of B one-day episodes at step ``t`` (build changed copies with `dataclasses.replace`).

    Shapes: B batch rows, N agents (N_b batteries, N_h heat pumps, N_g generators), T steps per day,
    L feeder loads, J load nodes, m power-flow active nodes.
    """

    t: int
    """Index of the next step to take, 0..T (T: the episode is over)."""
    day_idx: torch.Tensor
    """[B] int64 day index 0..364 of each row (day of year minus one)."""
    soc_kwh: torch.Tensor
    """[B, N_b] battery state of charge, kWh."""
    t_indoor_c: torch.Tensor
    """[B, N_h] indoor temperature of each heat pump's building, C."""
    p_prev_kw: torch.Tensor
    """[B, N_g] generator output of the previous step, kW (generation positive)."""
    soc_init_kwh: torch.Tensor
    """[B, N_b] battery state of charge at the start of the day, kWh (the terminal condition's reference)."""
    t_indoor_init_c: torch.Tensor
    """[B, N_h] indoor temperature at the start of the day, C (the terminal condition's reference)."""
    v_node_pu: torch.Tensor
    """[B, J] voltage magnitude at each load node after the previous step, pu."""
    v_active_pu: torch.Tensor
    """[B, m] complex power-flow solution of the previous step (warm start; no gradient)."""
    load_p_kw: torch.Tensor
    """[B, T, L] household (feeder) load per step, kW."""
    load_q_kvar: torch.Tensor
    """[B, T, L] household reactive load per step, kvar."""
    pv_kw: torch.Tensor
    """[B, T, J] rooftop PV output per load node and step, kW (generation positive)."""
    t_outdoor_c: torch.Tensor
    """[B, T] outdoor temperature, C."""
    price_per_kwh: torch.Tensor
    """[B, T] import price, $/kWh."""
    export_price_per_kwh: torch.Tensor
    """[B, T] export price, $/kWh."""
    obs: torch.Tensor
    """[B, N, OBS_DIM] observation of every agent for step ``t`` (see OBS_NAMES)."""

    @property
    def batch_size(self) -> int:
        """Number of batch rows B."""
        return int(self.day_idx.shape[0])

    def select(self, rows: torch.Tensor | Sequence[int] | slice) -> State:
        """The sub-batch of the given rows (a new State; every batched tensor indexed on dim 0)."""
        if not isinstance(rows, slice):
            rows = torch.as_tensor(rows, dtype=torch.int64, device=self.day_idx.device)
        changes = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                changes[f.name] = value[rows]
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class StepResult:
    """Everything one step returns (B rows, N agents, n feeder nodes)."""

    state: State
    """Next state (its ``obs`` is the observation for the next step)."""
    cost: torch.Tensor
    """[B, N] per-agent cost of the step, $ (electricity_cost + device_cost + terminal_cost)."""
    electricity_cost: torch.Tensor
    """[B, N] electricity cost of the agent's device power at the step's price, $ (negative = revenue)."""
    device_cost: torch.Tensor
    """[B, N] degradation (battery) or fuel (generator) cost, $; 0 for heat pumps."""
    device_violation: torch.Tensor
    """[B, N] device violation: kW projected away (battery, generator), K outside the comfort band (heat pump)."""
    terminal_shortfall: torch.Tensor
    """[B, N] on the day's last step, stored energy below its initial value: battery kWh, heat pump K (indoor
    temperature below its initial value when heating, above it when cooling); 0 for generators and before
    the last step."""
    terminal_cost: torch.Tensor
    """[B, N] the terminal shortfall priced at ``terminal_price_per_kwh``, $ (part of ``cost``)."""
    voltage_violation: torch.Tensor
    """[B, n] per-node distance outside [v_min_pu, v_max_pu], pu."""
    v_mag_pu: torch.Tensor
    """[B, n] node voltage magnitudes, pu (names in ``Sim.node_names``)."""
    p_kw: torch.Tensor
    """[B, N] delivered device power, kW (positive = consumption)."""
    action: torch.Tensor
    """[B, N] the actions after clipping to [-1, 1]."""
    converged: torch.Tensor
    """[B] bool: the power flow of the row converged."""
    iterations: torch.Tensor
    """[B] int64: power-flow iterations of the row."""
    truncated: bool
    """True when this step ended the episode (the state's ``t`` reached T)."""

    @property
    def obs(self) -> torch.Tensor:
        """[B, N, OBS_DIM] observation for the next step (``state.obs``)."""
        return self.state.obs


# ----------------------------------------------------------------------------------------------------------
# The simulator
# ----------------------------------------------------------------------------------------------------------


def _prepare_feeder(config: SimConfig) -> Feeder:
    if isinstance(config.feeder, Feeder):
        from gridedge_env.network.checks import validate_feeder

        feeder = config.feeder
        validate_feeder(feeder, f"feeder {feeder.name!r}")  # files are validated when read; a Feeder built in code here
    elif isinstance(config.feeder, str) and config.feeder.lower().endswith(".json"):
        feeder = Feeder.load(config.feeder)  # gridedge's own format, e.g. written by Feeder.save
    elif isinstance(config.feeder, str) and config.feeder.lower().endswith(".dss"):
        from gridedge_env.network import from_opendss

        feeder = from_opendss(config.feeder)
    elif isinstance(config.feeder, str):
        feeder = load_feeder(config.feeder)
    else:
        raise ValueError(
            f"feeder must be a shipped feeder name, a .json or .dss path, or a Feeder, got "
            f"{type(config.feeder).__name__}"
        )
    if config.source_v_pu is not None:
        if not (math.isfinite(config.source_v_pu) and 0.8 <= config.source_v_pu <= 1.2):
            raise ValueError(f"source_v_pu must be within [0.8, 1.2] pu, got {config.source_v_pu!r}")
        feeder = dataclasses.replace(feeder, source=dataclasses.replace(feeder.source, v_pu=config.source_v_pu))
    if config.regulator_taps == "neutral":
        transformers = tuple(
            dataclasses.replace(
                tr,
                windings=tuple(
                    dataclasses.replace(w, tap_pu=1.0) if k + 1 == tr.regulated_winding else w
                    for k, w in enumerate(tr.windings)
                ),
            )
            for tr in feeder.transformers
        )
        feeder = dataclasses.replace(feeder, transformers=transformers)
    elif config.regulator_taps != "feeder":
        raise ValueError(f"regulator_taps must be 'neutral' or 'feeder', got {config.regulator_taps!r}")
    return feeder


def check_seed(seed) -> int:
    """A reset seed as an int: an integer in [0, 2**63) (bools, floats and strings are an error)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return int(seed)


def real_array(values, what: str) -> np.ndarray:
    """``values`` as a float64 array; strings, bytes, None, complex numbers and other objects are an error
    (numpy would turn "0.5" into 0.5, None into NaN and drop an imaginary part)."""
    try:
        arr = np.asarray(values)
    except ValueError as exc:  # ragged nesting
        raise ValueError(f"{what} must be an array of real numbers: {exc}") from exc
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"{what} must be numeric (real numbers), got {values!r}"
            if arr.size == 1
            else f"{what} must be numeric (real numbers), got an array of dtype {arr.dtype}"
        )
    return arr.astype(np.float64)


def _check_config(config: SimConfig) -> None:
    n = config.n_agents
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise ValueError(f"n_agents must be an integer, got {n!r}")
    if n < 1:
        raise ValueError(f"n_agents must be >= 1 (an impossible configuration: {n} agents)")
    if config.dtype not in _DEFAULT_TOL:
        raise ValueError(f"dtype must be torch.float64 or torch.float32, got {config.dtype}")
    for name in ("pf_tol", "pf_adjoint_tol"):
        value = getattr(config, name)
        if value is not None and not (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and 0 < value < 1
        ):
            raise ValueError(f"{name} must be None or a number in (0, 1), got {value!r}")
    m = config.pf_max_iter
    if isinstance(m, bool) or not isinstance(m, int | np.integer) or m < 1:
        raise ValueError(f"pf_max_iter must be an integer >= 1, got {m!r}")
    for name in ("load_scale", "pv_kwp_per_kw", "min_spot_kw_per_agent"):
        value = getattr(config, name)
        if value is None and name != "min_spot_kw_per_agent":
            continue
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    h = config.households_per_load
    if isinstance(h, bool) or not isinstance(h, int | np.integer) or h < 1:
        raise ValueError(f"households_per_load must be an integer >= 1, got {h!r}")
    if config.min_spot_kw_per_agent <= 0:
        raise ValueError(f"min_spot_kw_per_agent must be > 0, got {config.min_spot_kw_per_agent!r}")
    if not (isinstance(config.generator_min_output, int | float) and 0 <= config.generator_min_output < 1):
        raise ValueError(f"generator_min_output must be in [0, 1), got {config.generator_min_output!r}")
    for name in ("heatpump_sizing_margin", "terminal_price_per_kwh"):
        value = getattr(config, name)
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not config.v_min_pu < config.v_max_pu:
        raise ValueError(f"v_min_pu must be below v_max_pu, got {config.v_min_pu} and {config.v_max_pu}")
    check_device(config.device)


def check_device(name) -> None:
    """ValueError unless ``name`` is a torch device this machine has (a CUDA device needs a CUDA build of
    torch and a visible GPU of that index)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {name!r}") from exc
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ValueError(f"device {name!r}: CUDA is not available on this machine ({why}; torch {torch.__version__})")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


class Sim:
    """A simulator instance: one feeder, N placed agents with sampled parameters. Build with `make_sim`.

    Attributes:
        config: The `SimConfig`, with the feeder's calibration filled in where it was None.
        compiled: The compiled feeder (`gridedge_env.powerflow.CompiledFeeder`).
        agents: Agent names, in action order: ``battery_0..``, ``heatpump_0..``, ``generator_0..``.
        agent_groups: ``{"battery": [...], "heatpump": [...], "generator": [...]}`` (every type present,
            possibly empty).
        agent_slices: ``{type: slice}`` of each type on the agent axis.
        agent_type: Type name of every agent.
        agent_node: [N] int64 index of every agent's load node into ``load_node_names``.
        agent_node_names: ``'bus.node'`` of every agent.
        agent_bus: Bus name of every agent.
        agent_phase: [N] int64 phase (bus node number 1, 2 or 3) of every agent.
        params: ``{type: parameter dataclass}`` from `gridedge_env.devices` ([N_type] tensors).
        load_node_names: The J load nodes (power-flow injection nodes), ``'bus.node'``.
        node_spot_kw: [J] spot load of every load node, kW (the placement weights).
        node_pv_kwp: [J] rooftop PV of every load node, kWp.
        node_names: The n feeder nodes of ``v_mag_pu`` and ``voltage_violation``.
        n_steps: Steps per episode T.
        dt_h: Step length, hours.
        hosting_capacity: Largest number of agents this feeder hosts under the hosting rule.
        device_scale: Size of every device relative to the drawn one (`placement.device_scale`; 1 unless agents
            are denser than one per 3 kW of spot load).
    """

    def __init__(self, config: SimConfig) -> None:
        _check_config(config)
        self.dtype = config.dtype
        self.device = torch.device(config.device)
        feeder = _prepare_feeder(config)
        calibration = FEEDER_CALIBRATION.get(feeder.name.lower(), FEEDER_CALIBRATION["default"])
        config = dataclasses.replace(
            config, **{k: v for k, v in calibration.items() if getattr(config, k) is None}
        )  # sim.config holds the numbers the simulator uses
        self.config = config
        self.compiled = powerflow.compile(
            feeder, dtype=config.dtype, device=self.device, load_voltage_limits=config.load_voltage_limits
        )
        c = self.compiled
        self.node_names: list[str] = list(c.node_names)
        self.load_node_names: list[str] = list(c.injection_node_names)
        spot = node_spot_kw(c)  # [J] float64 CPU
        total_kw = float(spot.sum())
        self.hosting_capacity = hosting_capacity(total_kw, config.min_spot_kw_per_agent)
        if config.n_agents > self.hosting_capacity:
            raise ValueError(
                f"n_agents={config.n_agents} is more than feeder {feeder.name!r} can host: the hosting rule "
                f"allows one agent per {config.min_spot_kw_per_agent:g} kW of spot load, "
                f"{total_kw:g} kW in total, i.e. at most {self.hosting_capacity} agents"
            )
        counts = split_mix(int(config.n_agents), config.mix, AGENT_TYPES)
        self.n_agents = int(config.n_agents)
        self.n_per_type = counts
        self.device_scale = device_scale(total_kw, self.n_agents)

        gen = torch.Generator().manual_seed(int(config.seed))
        node_of_agent = place_agents(spot, self.n_agents, gen)
        # parameters (and, in reset, initial states) are drawn in float64 on the CPU and then cast, so the same
        # seed gives the same agents in every dtype and on every device
        self._params64 = {}
        self.params = {}
        for name, spec in DEVICE_TYPES.items():
            kwargs = {}
            if name == "generator":
                kwargs = {"ramp_limit": config.generator_ramp_limit, "min_output_fraction": config.generator_min_output}
            elif name == "heatpump":
                heating_design_c, cooling_design_c = design_temperatures()
                kwargs = {
                    "heating_design_c": heating_design_c,
                    "cooling_design_c": cooling_design_c,
                    "sizing_margin": config.heatpump_sizing_margin,
                }
            p64 = spec.sample_params(counts[name], gen, dtype=torch.float64, device="cpu", **kwargs)
            if self.device_scale < 1.0:
                p64 = p64.scaled(self.device_scale)
            self._params64[name] = p64
            self.params[name] = dataclasses.replace(
                p64,
                **{
                    f.name: getattr(p64, f.name).to(dtype=config.dtype, device=self.device)
                    for f in dataclasses.fields(p64)
                },
            )

        self.agents: list[str] = []
        self.agent_type: list[str] = []
        self.agent_groups: dict[str, list[str]] = {}
        self.agent_slices: dict[str, slice] = {}
        start = 0
        for name in AGENT_TYPES:
            names = [f"{name}_{i}" for i in range(counts[name])]
            self.agent_groups[name] = names
            self.agents += names
            self.agent_type += [name] * counts[name]
            self.agent_slices[name] = slice(start, start + counts[name])
            start += counts[name]
        self.agent_node = node_of_agent.to(self.device)
        self.agent_node_names = [self.load_node_names[j] for j in node_of_agent.tolist()]
        self.agent_bus = [nm.rsplit(".", 1)[0] for nm in self.agent_node_names]
        self.agent_phase = torch.tensor(
            [int(nm.rsplit(".", 1)[1]) for nm in self.agent_node_names], dtype=torch.int64, device=self.device
        )

        as_f = lambda x: torch.as_tensor(x, dtype=config.dtype, device=self.device)  # noqa: E731
        self.node_spot_kw = as_f(spot)
        self.node_pv_kwp = as_f(spot * config.pv_kwp_per_kw)
        # load -> load node shares (for the node_load observation) as (load, node, share) entries: the dense
        # [L, J] matrix is almost all zeros, and its product cost a third of a step on IEEE-8500
        shares = load_node_shares(c)
        share_load, share_node = shares.nonzero(as_tuple=True)
        self._share_load, self._share_node = share_load.to(self.device), share_node.to(self.device)
        self._share = as_f(shares[share_load, share_node])
        self._node_spot_safe = as_f(spot.clamp_min(1e-9))
        self._load_node_index = torch.tensor(
            [self.node_names.index(nm) for nm in self.load_node_names], dtype=torch.int64, device=self.device
        )

        self.data = load_scenario_data(config.step_minutes).to(config.dtype, self.device)
        self.n_steps = self.data.steps_per_day
        self.dt_h = config.step_minutes / 60.0
        tol, adj = _DEFAULT_TOL[config.dtype]
        self._pf_tol = config.pf_tol if config.pf_tol is not None else tol
        self._pf_adjoint_tol = config.pf_adjoint_tol if config.pf_adjoint_tol is not None else adj
        self._spot_p = as_f(c.load_p_kw) * config.load_scale
        self._spot_q = as_f(c.load_q_kvar) * config.load_scale

    # ------------------------------------------------------------------------------------------------------

    @property
    def n_nodes(self) -> int:
        """Number of feeder nodes n (of ``v_mag_pu``)."""
        return len(self.node_names)

    @property
    def n_load_nodes(self) -> int:
        """Number of load nodes J."""
        return len(self.load_node_names)

    def __repr__(self) -> str:
        c = self.config
        feeder = c.feeder if isinstance(c.feeder, str) else c.feeder.name
        return (
            f"Sim(feeder={feeder!r}, n_agents={self.n_agents}, {self.n_per_type}, "
            f"steps={self.n_steps}x{c.step_minutes}min, dtype={c.dtype}, device={c.device!r})"
        )

    # ------------------------------------------------------------------------------------------------------

    def reset(
        self,
        batch_size: int = 1,
        seed: int = 0,
        split: str = "train",
        days: Sequence[int] | torch.Tensor | None = None,
        households: str | None = None,
    ) -> State:
        """Draw ``batch_size`` one-day episodes.

        Randomness, in this order from ``torch.Generator().manual_seed(seed)``: the day of every row
        (uniform with replacement over the split, unless ``days`` is given), the household load shapes
        (`scenarios.draw_load_shapes`, from the split's household profiles), the initial device states
        (battery SOC and indoor temperature uniform within their bounds; generators at their minimum output).
        Then one power flow of step 0's household load and PV
        with every device idle gives the initial node voltages (observation) and the warm start.

        Args:
            batch_size: Number of episodes B (>= 1). With ``days`` it may be None or must equal len(days).
            seed: Seed of this reset.
            split: "train", "validation", "test" or "all" (`scenarios.split_days`, `scenarios.split_profiles`).
            days: Optional explicit day indices [B], each in the split.
            households: The split whose household profiles the loads are drawn from (default ``split``'s own);
                another split's households on the same days tell the days' weather from the households' load.

        Returns:
            The initial State (``t = 0``).

        Raises:
            ValueError: Unknown split or households split, bad batch size, a day not in the split, or a seed
                that is not an integer in [0, 2**63).
        """
        allowed = split_days(split)  # raises ValueError naming an unknown split
        profiles = split_profiles(split if households is None else households, self.data.n_profiles)
        gen = torch.Generator().manual_seed(check_seed(seed))
        if days is not None:
            day_idx = torch.as_tensor(days).to(torch.int64).reshape(-1)
            if batch_size is not None and int(batch_size) != day_idx.numel():
                raise ValueError(f"batch_size={batch_size} disagrees with {day_idx.numel()} days given")
            if day_idx.numel() < 1:
                raise ValueError("days must hold at least one day index")
            bad = ~np.isin(day_idx.numpy(), allowed)
            if bad.any():
                raise ValueError(
                    f"day {int(day_idx[bad.argmax()])} is not a {split!r} day (see gridedge_env.scenarios.split_days)"
                )
        else:
            if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
                raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
            pick = torch.randint(len(allowed), (int(batch_size),), generator=gen)
            day_idx = torch.as_tensor(allowed)[pick]
        batch = int(day_idx.numel())
        day_dev = day_idx.to(self.device)

        c, data = self.compiled, self.data
        h = self.config.households_per_load
        shapes = draw_load_shapes(data, day_dev, c.n_loads * h, gen, profiles=profiles)  # [B, T, L * H]
        shapes = shapes.reshape(batch, self.n_steps, c.n_loads, h).mean(dim=3)  # [B, T, L]
        load_p = shapes * self._spot_p
        load_q = shapes * self._spot_q
        pv = data.pv_kw_per_kwp[day_dev][:, :, None] * self.node_pv_kwp  # [B, T, J]
        dev_state = {
            spec.state_name: spec.initial_state(self._params64[name], batch, gen).to(
                dtype=self.dtype, device=self.device
            )
            for name, spec in DEVICE_TYPES.items()
        }

        # devices idle at step 0 (generators at their initial output, their minimum)
        inj = -pv[:, 0]
        if self.n_per_type["generator"]:
            gen_p = -dev_state["p_prev_kw"]
            inj = inj.index_add(1, self.agent_node[self.agent_slices["generator"]], gen_p)
        with torch.no_grad():
            r = powerflow.solve(
                c,
                load_p_kw=load_p[:, 0],
                load_q_kvar=load_q[:, 0],
                injection_p_kw=inj,
                injection_q_kvar=torch.zeros_like(inj),
                tol=self._pf_tol,
                max_iter=self.config.pf_max_iter,
            )
        v_active = torch.where(r.converged[:, None], r.v_active_pu, c.w_active.expand(batch, -1))
        state = State(
            t=0,
            day_idx=day_dev,
            soc_kwh=dev_state["soc_kwh"],
            t_indoor_c=dev_state["t_indoor_c"],
            p_prev_kw=dev_state["p_prev_kw"],
            soc_init_kwh=dev_state["soc_kwh"],
            t_indoor_init_c=dev_state["t_indoor_c"],
            v_node_pu=r.v_mag_pu[:, self._load_node_index],
            v_active_pu=v_active,
            load_p_kw=load_p,
            load_q_kvar=load_q,
            pv_kw=pv,
            t_outdoor_c=data.temperature_c[day_dev],
            price_per_kwh=data.price_per_kwh[day_dev],
            export_price_per_kwh=data.export_price_per_kwh[day_dev],
            obs=torch.empty(0),
        )
        return dataclasses.replace(state, obs=self.observe(state))

    # ------------------------------------------------------------------------------------------------------

    def observe(self, state: State) -> torch.Tensor:
        """Local observation of every agent for step ``state.t``: [B, N, OBS_DIM] (layout in OBS_NAMES).

        Features (the same for all types except ``own_state`` and ``own_reference``): sin and cos of the time
        of day; import price / 0.40 $/kWh; outdoor temperature / 20 C; (own node's voltage after the previous
        step - 1) / 0.05; own node's household load and PV output of this step, each in kW per kW of the node's
        spot load; own state: battery (soc - soc_min) / (soc_max - soc_min), heat pump (t_indoor - band centre) /
        (half band width), generator previous output / p_max; own reference: the terminal condition's
        reference on the own-state scale (battery the initial state of charge, heat pump the initial indoor
        temperature; 0 for generators, which have none). A local policy needs the reference to end its day
        where the terminal condition asks: it is the device's own memory of the day's start. Rule action:
        what the device's built-in controller would do now (`builtin_actions`: batteries idle, generators at
        their minimum, heat pumps on their thermostat); the thermostat needs the building's resistance,
        capacitance and COP, which no other feature carries.
        """
        t = state.t
        k = min(t, self.n_steps - 1)
        batch, n = state.batch_size, self.n_agents
        angle = 2.0 * math.pi * t / self.n_steps
        node = self.agent_node
        load_kw = state.load_p_kw[:, k, self._share_load] * self._share
        node_load = load_kw.new_zeros(batch, self.n_load_nodes).index_add_(1, self._share_node, load_kw)
        node_load = node_load / self._node_spot_safe  # [B, J]
        node_pv = state.pv_kw[:, k] / self._node_spot_safe
        bat, hp = self.params["battery"], self.params["heatpump"]
        soc_share = lambda soc_kwh: (soc_kwh - bat.soc_min_kwh) / (bat.soc_max_kwh - bat.soc_min_kwh)  # noqa: E731
        band_position = lambda t_c: (t_c - 0.5 * (hp.t_min_c + hp.t_max_c)) / (0.5 * (hp.t_max_c - hp.t_min_c))  # noqa: E731
        own = torch.cat(
            [
                soc_share(state.soc_kwh),
                band_position(state.t_indoor_c),
                state.p_prev_kw / self.params["generator"].p_max_kw,
            ],
            dim=1,
        )
        reference = torch.cat(
            [soc_share(state.soc_init_kwh), band_position(state.t_indoor_init_c), torch.zeros_like(state.p_prev_kw)],
            dim=1,
        )
        per_row = lambda x: x[:, None].expand(batch, n)  # noqa: E731
        columns = [
            torch.full((batch, n), math.sin(angle), dtype=self.dtype, device=self.device),
            torch.full((batch, n), math.cos(angle), dtype=self.dtype, device=self.device),
            per_row(state.price_per_kwh[:, k] / OBS_SCALES["price_per_kwh"]),
            per_row(state.t_outdoor_c[:, k] / OBS_SCALES["t_outdoor_c"]),
            (state.v_node_pu[:, node] - OBS_SCALES["v_pu_centre"]) / OBS_SCALES["v_pu_half_band"],
            node_load[:, node],
            node_pv[:, node],
            own,
            reference,
            builtin_actions(self, state),
            *action_bounds(self, state),
        ]
        return torch.stack(columns, dim=2)

    def obs_by_type(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split [B, N, D] observations (or any [B, N, ...] tensor) into ``{type: [B, N_type, ...]}`` views."""
        return {name: obs[:, sl] for name, sl in self.agent_slices.items()}

    # ------------------------------------------------------------------------------------------------------

    def _check_actions(self, state: State, actions) -> torch.Tensor:
        if not isinstance(actions, torch.Tensor):
            actions = torch.as_tensor(real_array(actions, "actions"))
        expected = (state.batch_size, self.n_agents)
        if tuple(actions.shape) != expected:
            raise ValueError(f"actions must have shape [B, N] = {list(expected)}, got {list(actions.shape)}")
        if not (actions.is_floating_point() or actions.dtype in (torch.int32, torch.int64, torch.bool)):
            raise ValueError(f"actions must be real numbers, got dtype {actions.dtype}")
        actions = actions.to(dtype=self.dtype, device=self.device)
        finite = torch.isfinite(actions.detach())
        if not bool(finite.all()):
            bad = (~finite).nonzero()[0].tolist()
            raise ValueError(
                f"actions contain NaN or infinite values (first at row {bad[0]}, agent {self.agents[bad[1]]!r})"
            )
        return actions

    def step(self, state: State, actions: torch.Tensor, *, detach_state: bool = False) -> StepResult:
        """Advance every episode by one step. Deterministic; never modifies ``state``.

        Args:
            state: The current state (from `reset` or a previous step), ``state.t < T``.
            actions: [B, N] normalised actions in agent order (``sim.agents``). Values outside [-1, 1] are
                clipped to it (``torch.clamp``: zero gradient beyond the bound).
            detach_state: Cut the gradient flow into later steps: the returned next state (device states,
                node voltages, observation) is detached. Costs and violations of this step keep their
                gradient w.r.t. ``actions``.

        Returns:
            StepResult.

        Raises:
            ValueError: Wrong action shape, NaN or infinite actions, or an episode that is already over.
        """
        if not isinstance(state, State):
            raise ValueError(f"state must be a State from this simulator's reset/step, got {type(state).__name__}")
        if not 0 <= state.t < self.n_steps:
            raise ValueError(f"the episode is over (state.t = {state.t} of {self.n_steps} steps); call reset")
        a = torch.clamp(self._check_actions(state, actions), -1.0, 1.0)
        t, dt = state.t, self.dt_h
        c = self.compiled
        batch = state.batch_size
        exogenous = {"t_outdoor_c": state.t_outdoor_c[:, t : t + 1]}

        p_parts, cost_parts, viol_parts, next_dev = [], [], [], {}
        for name, spec in DEVICE_TYPES.items():
            sl = self.agent_slices[name]
            out = spec.step(
                self.params[name],
                getattr(state, spec.state_name),
                a[:, sl],
                dt_h=dt,
                **{k: exogenous[k] for k in spec.exogenous},
            )
            p_parts.append(out.p_kw)
            cost_parts.append(out.device_cost)
            viol_parts.append(out.violation)
            next_dev[spec.state_name] = out.next_state
        p_kw = torch.cat(p_parts, dim=1)
        device_cost = torch.cat(cost_parts, dim=1)
        device_violation = torch.cat(viol_parts, dim=1)

        r = powerflow.solve(
            c,
            **self.powerflow_inputs(state, p_kw),
            v_init=state.v_active_pu,
            tol=self._pf_tol,
            max_iter=self.config.pf_max_iter,
            adjoint_tol=self._pf_adjoint_tol,
        )
        v = r.v_mag_pu
        voltage_violation = torch.relu(v - self.config.v_max_pu) + torch.relu(self.config.v_min_pu - v)

        price = state.price_per_kwh[:, t : t + 1]
        energy_kwh = p_kw * dt
        if self.config.net_metering:
            electricity_cost = price * energy_kwh
        else:
            export = state.export_price_per_kwh[:, t : t + 1]
            electricity_cost = price * torch.relu(energy_kwh) - export * torch.relu(-energy_kwh)

        terminal_shortfall, terminal_cost = self._terminal(state, next_dev)
        v_active = torch.where(r.converged[:, None], r.v_active_pu.detach(), c.w_active.expand(batch, -1))
        next_state = dataclasses.replace(
            state,
            t=t + 1,
            soc_kwh=next_dev["soc_kwh"],
            t_indoor_c=next_dev["t_indoor_c"],
            p_prev_kw=next_dev["p_prev_kw"],
            v_node_pu=v[:, self._load_node_index],
            v_active_pu=v_active,
        )
        if detach_state:
            next_state = _detached(next_state)
        next_state = dataclasses.replace(next_state, obs=self.observe(next_state))
        return StepResult(
            state=next_state,
            cost=electricity_cost + device_cost + terminal_cost,
            electricity_cost=electricity_cost,
            device_cost=device_cost,
            device_violation=device_violation,
            terminal_shortfall=terminal_shortfall,
            terminal_cost=terminal_cost,
            voltage_violation=voltage_violation,
            v_mag_pu=v,
            p_kw=p_kw,
            action=a,
            converged=r.converged,
            iterations=r.iterations,
            truncated=next_state.t == self.n_steps,
        )

    def powerflow_inputs(self, state: State, p_kw: torch.Tensor) -> dict[str, torch.Tensor]:
        """The power flow's inputs at step ``state.t`` (keyword arguments of `powerflow.solve`): the feeder
        loads [B, n_loads] (kW, kvar) and, at every load node, the agents' power ``p_kw`` [B, N] less the
        rooftop PV [B, J] (kW, positive = consumption; no reactive power)."""
        t = state.t
        inj_p = (-state.pv_kw[:, t]).index_add(1, self.agent_node, p_kw)
        return {
            "load_p_kw": state.load_p_kw[:, t],
            "load_q_kvar": state.load_q_kvar[:, t],
            "injection_p_kw": inj_p,
            "injection_q_kvar": torch.zeros_like(inj_p.detach()),
        }

    def _terminal(self, state: State, next_dev: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Terminal shortfall and its cost [B, N] of the step from ``state`` (zeros unless it is the last):
        the positive part of `terminal_deficit`, its energy priced at ``terminal_price_per_kwh``."""
        if state.t != self.n_steps - 1:
            zeros = torch.zeros((state.batch_size, self.n_agents), dtype=self.dtype, device=self.device)
            return zeros, zeros
        deficit, deficit_kwh = self.terminal_deficit(state, next_dev["soc_kwh"], next_dev["t_indoor_c"])
        return torch.relu(deficit), self.config.terminal_price_per_kwh * torch.relu(deficit_kwh)

    def terminal_deficit(
        self, last: State, soc_end_kwh: torch.Tensor, t_indoor_end_c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Signed terminal deficit [B, N] of the day ending in the given device states, from ``last``, the state
        before the day's last step; positive where stored energy is below its initial value.

        Battery: ``soc_init - soc_end`` kWh. Heat pump: the indoor temperature below its initial value when
        heating at the last step (above it when cooling), K; its energy is the heat ``C * K`` per electrical
        kWh at the last step's COP (what restoring it would draw). Generators: 0.

        Returns:
            ``(deficit, deficit_kwh)``: in the shortfall's unit (kWh, K, -) and in electrical kWh.
        """
        p = self.params["heatpump"]
        t_out = last.t_outdoor_c[:, self.n_steps - 1 :]
        heating = heatpump_heating(p, t_out)
        cop_heat, cop_cool = heatpump_cop(p, t_out)
        drop_k = last.t_indoor_init_c - t_indoor_end_c
        hp_k = torch.where(heating, drop_k, -drop_k)
        hp_kwh = p.c_kwh_per_k * hp_k / torch.where(heating, cop_heat, cop_cool)
        bat_kwh = last.soc_init_kwh - soc_end_kwh
        gen = torch.zeros_like(last.p_prev_kw)
        return torch.cat([bat_kwh, hp_k, gen], dim=1), torch.cat([bat_kwh, hp_kwh, gen], dim=1)

    def detach(self, state: State) -> State:
        """A copy of ``state`` with every tensor detached (cuts the gradient flow into later steps)."""
        return _detached(state)


def _detached(state: State) -> State:
    changes = {
        f.name: getattr(state, f.name).detach()
        for f in dataclasses.fields(state)
        if isinstance(getattr(state, f.name), torch.Tensor)
    }
    return dataclasses.replace(state, **changes)


def make_sim(**cfg) -> Sim:
    """Build a simulator: ``make_sim(feeder="ieee123", n_agents=1000, mix=(0.4, 0.4, 0.2), ...)``.

    Args:
        **cfg: Fields of `SimConfig`.

    Returns:
        A `Sim`.

    Raises:
        ValueError: An unknown option, or an impossible configuration (0 agents, more agents than the
            feeder hosts, bad mix, ...), named in the message.
    """
    known = {f.name for f in dataclasses.fields(SimConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown simulator option(s) {unknown}; known: {sorted(known)}")
    if "mix" in cfg:
        cfg["mix"] = tuple(cfg["mix"])
    if isinstance(cfg.get("dtype"), str):
        names = {"float64": torch.float64, "float32": torch.float32}
        if cfg["dtype"] not in names:
            raise ValueError(f"dtype must be 'float64' or 'float32', got {cfg['dtype']!r}")
        cfg["dtype"] = names[cfg["dtype"]]
    return Sim(SimConfig(**cfg))


def sim_config_dict(sim: Sim) -> dict:
    """The simulator's config as JSON-friendly values (feeder by name, dtype as a string); `make_sim`
    rebuilds the same simulator from it (what a run directory records)."""
    out = {}
    for f in dataclasses.fields(sim.config):
        value = getattr(sim.config, f.name)
        if isinstance(value, torch.dtype):
            value = str(value).replace("torch.", "")
        elif f.name == "feeder" and not isinstance(value, str):
            value = getattr(value, "name", str(value))
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


# ----------------------------------------------------------------------------------------------------------
# What each device can do this step (physics the rules and the tests build on)
# ----------------------------------------------------------------------------------------------------------


def feasible_action_bounds(sim: Sim, state: State) -> tuple[torch.Tensor, torch.Tensor]:
    """The actions each device can carry out in full at ``state``: ``(low, high)``, each [B, N] in [-1, 1].

    Battery: charging limited by the room left below ``soc_max_kwh``, discharging by the energy above
    ``soc_min_kwh`` (after efficiencies). Generator: the ramp limit around the previous output (and the
    output range). Heat pump: the whole range (its comfort band is a consequence of the schedule, not a
    bound on one action). An action inside the bounds has no projected (kW) device violation.
    """
    batch = state.batch_size
    low = torch.full((batch, sim.n_agents), -1.0, dtype=sim.dtype, device=sim.device)
    high = torch.ones_like(low)
    sl = sim.agent_slices["battery"]
    p = sim.params["battery"]
    p_lo, p_hi = battery_power_limits(p, state.soc_kwh, sim.dt_h)
    low[:, sl], high[:, sl] = p_lo / p.p_max_kw, p_hi / p.p_max_kw
    # generator: action -1 = p_max_kw, +1 = p_min_kw (affine), so more output is a lower action
    sl = sim.agent_slices["generator"]
    p = sim.params["generator"]
    out_lo, out_hi = generator_output_limits(p, state.p_prev_kw, sim.dt_h)
    to_action = lambda out_kw: 1.0 - 2.0 * (out_kw - p.p_min_kw) / (p.p_max_kw - p.p_min_kw)  # noqa: E731
    low[:, sl], high[:, sl] = to_action(out_hi), to_action(out_lo)
    return low, high


def action_bounds(sim: Sim, state: State) -> tuple[torch.Tensor, torch.Tensor]:
    """The actions each device can take at ``state`` without a device violation, now or at the day's end:
    ``(low, high)``, each [B, N] in [-1, 1], ``low <= high``: the observation's ``action_low`` and ``action_high``.

    - Battery: what its state of charge allows in this step (`feasible_action_bounds`), and no deeper
      discharge than charging at full power over the day's remaining steps can make up, so that its terminal
      condition (state of charge back to its initial value) can always still be met.
    - Generator: its ramp window (`feasible_action_bounds`).
    - Heat pump: the loads that keep its building inside the comfort band at the end of the step
      (`gridedge_env.devices.heatpump_comfort_limits`; where no load can, both bounds are the closest one).

    Why observed: a local policy cannot know its device's power rating, capacity, efficiencies or building
    model, and the learners act inside these bounds (`gradmap_agent.networks.squash`), as the optimum's planner
    does (`baselines.oracle.FeasibleMap`): a constraint the device can keep by itself is then kept by
    construction, and the Lagrangian's device terms are left with what no single step decides (a heat pump's
    indoor temperature at the day's end, a comfort band its unit is too small for).
    """
    low, high = feasible_action_bounds(sim, state)
    lows, highs = sim.obs_by_type(low), sim.obs_by_type(high)
    bat = sim.params["battery"]
    remaining_steps = max(sim.n_steps - state.t - 1, 0)
    # the lowest state of charge after this step from which full-power charging reaches the initial one
    floor_kwh = state.soc_init_kwh - remaining_steps * bat.p_max_kw * bat.eta_charge * sim.dt_h
    gap_kwh = floor_kwh - state.soc_kwh
    least_kw = torch.where(gap_kwh > 0, gap_kwh / (bat.eta_charge * sim.dt_h), gap_kwh * bat.eta_discharge / sim.dt_h)
    lows["battery"] = torch.minimum(torch.maximum(lows["battery"], least_kw / bat.p_max_kw), highs["battery"])
    lows["heatpump"], highs["heatpump"] = heatpump_comfort_actions(sim, state)
    return torch.cat(list(lows.values()), dim=1), torch.cat(list(highs.values()), dim=1)


def heatpump_comfort_actions(sim: Sim, state: State) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)`` [B, N_h]: the heat-pump actions that keep each building inside its comfort band at the end
    of step ``state.t`` (`gridedge_env.devices.heatpump_comfort_limits` mapped to actions ``2 u - 1``; where no
    load can, both are the closest one): the heat pumps' part of `action_bounds` and of the optimum's feasible
    map (`baselines.oracle.FeasibleMap`)."""
    t = min(state.t, sim.n_steps - 1)
    u_lo, u_hi = heatpump_comfort_limits(
        sim.params["heatpump"], state.t_indoor_c, state.t_outdoor_c[:, t : t + 1], sim.dt_h
    )
    return 2.0 * u_lo - 1.0, 2.0 * u_hi - 1.0


def heatpump_target_actions(sim: Sim, state: State, target_c: torch.Tensor) -> torch.Tensor:
    """Heat-pump actions [B, N_h] that bring each building to ``target_c`` ([B, N_h], C) at the end of the
    step in the 1R1C model, as far as the unit can (a thermostat with perfect knowledge of its own building):
    the heat flow needed, in the step's mode (`gridedge_env.devices.heatpump_heating`), as a share ``u`` of
    full load clipped to [0, 1], mapped to the action ``2 u - 1``."""
    t = min(state.t, sim.n_steps - 1)
    free_c, gain_k = heatpump_response(
        sim.params["heatpump"], state.t_indoor_c, state.t_outdoor_c[:, t : t + 1], sim.dt_h
    )
    return 2.0 * torch.clamp((target_c - free_c) / gain_k, 0.0, 1.0) - 1.0


def cheap_and_dear_steps(sim: Sim, state: State) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether step ``state.t`` is priced at the day's lowest (cheap) and at its highest (dear) import rate, each
    [B, 1] bool: the hours the thermostat preheats in and the price-seeking rule trades in."""
    t = min(state.t, sim.n_steps - 1)
    price = state.price_per_kwh
    now = price[:, t : t + 1]
    return now <= price.amin(dim=1, keepdim=True) + 1e-9, now >= price.amax(dim=1, keepdim=True) - 1e-9


#: Margin inside the comfort band that the heat pumps' thermostat aims for, K.
THERMOSTAT_MARGIN_K = 0.25


def band_end_targets(sim: Sim, state: State) -> tuple[torch.Tensor, torch.Tensor]:
    """Every heat pump's indoor temperatures [B, N_h], C, at the least-consuming and at the most-consuming end of
    its comfort band, each `THERMOSTAT_MARGIN_K` inside it: heating consumes least at the cool end and most at
    the warm end, cooling the other way round (`heatpump_target_actions` turns them into actions)."""
    t = min(state.t, sim.n_steps - 1)
    p = sim.params["heatpump"]
    heating = heatpump_heating(p, state.t_outdoor_c[:, t : t + 1])
    warm_end, cool_end = p.t_max_c - THERMOSTAT_MARGIN_K, p.t_min_c + THERMOSTAT_MARGIN_K
    return torch.where(heating, cool_end, warm_end), torch.where(heating, warm_end, cool_end)


def thermostat_actions(sim: Sim, state: State) -> torch.Tensor:
    """Every heat pump's thermostat [B, N_h]: a thermostat that preheats (precools) in the day's cheapest hours.

    Cheap hours are the steps priced at the day's lowest rate. It aims at the most-consuming end of its comfort
    band in cheap hours (the top when heating, the bottom when cooling) and at the least-consuming end otherwise
    (`band_end_targets`)."""
    cheap, _ = cheap_and_dear_steps(sim, state)
    least_c, most_c = band_end_targets(sim, state)
    return heatpump_target_actions(sim, state, torch.where(cheap, most_c, least_c))


def builtin_actions(sim: Sim, state: State) -> torch.Tensor:
    """What every device does on its own, without a learned controller, [B, N]: batteries idle (action 0),
    generators at their minimum output (+1), heat pumps on their thermostat (`thermostat_actions`). It keeps
    every comfort band and never asks a device for more than it can do; the observation's ``rule_action``."""
    idle = torch.zeros_like(state.soc_kwh)
    minimum_output = torch.ones_like(state.p_prev_kw)
    return torch.cat([idle, thermostat_actions(sim, state), minimum_output], dim=1)
