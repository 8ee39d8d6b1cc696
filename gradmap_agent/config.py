"""The configuration pieces every trainer composes, and how flat ``KEY=VALUE`` settings reach them.

A trainer's config (`gradmap_agent.GradMAPConfig`, `baselines.ssl.SSLConfig`, `baselines.ppo.PPOConfig`)
holds its own algorithm's fields and these sections:

- `RunConfig` (``run``): budget, seed, checkpoints, periodic evaluation, failure limit: what the run
  layer's loop (`gridedge_run.loop.train`) reads;
- `OptimConfig` (``optim``): Adam, the learning-rate schedule over iterations, per-agent gradient clipping;
- `NormalizerConfig` (``normalizer``): the running observation statistics (`gradmap_agent.ObsNormalizer`);
- `PolicyConfig` (``policy``): every agent's network (`gradmap_agent.StackedMLPPolicy`);
- `LagrangianConfig` (``lagrangian``, gradient-based methods): multipliers and dual ascent;
- `ReplayConfig` (``replay``, gradient-based methods): hard-scenario replay and parameter averaging
  (`gradmap_agent.replay`).

`build_config(cls, fields)` builds any of them from flat names (``lr=1e-3``, ``eval_days=8``: each name
belongs to exactly one section or to the config itself), dotted names (``optim.lr=1e-3``) or whole sections
as dicts (a saved ``config.json``), and names unknown fields in its error.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field

__all__ = [
    "LR_SCHEDULES",
    "LagrangianConfig",
    "NormalizerConfig",
    "OptimConfig",
    "PolicyConfig",
    "ReplayConfig",
    "RunConfig",
    "build_config",
    "flatten_config",
    "route_fields",
    "section",
]

#: Learning-rate schedules, indexed by iteration (`OptimConfig.lr_at`).
LR_SCHEDULES = ("constant", "linear", "cosine")


def _raise(cls: type, problems: list[str]) -> None:
    if problems:
        raise ValueError(f"invalid {cls.__name__}: " + "; ".join(problems))


@dataclass(frozen=True)
class RunConfig:
    """What a run does around the algorithm: budget, seed, checkpoints, evaluation, failure limit."""

    iterations: int | None = 300
    """Number of iterations (rollouts); None: no limit (then `minutes` must be set)."""
    minutes: float | None = None
    """Training-time budget in minutes (rollouts and updates; checkpoints and evaluations not counted)."""
    seed: int = 0
    """Seed of the initialisation, the rollout days, the exploration noise and the minibatches."""
    checkpoint_every: int = 25
    """Write a checkpoint every this many iterations (and at the end)."""
    eval_every: int = 0
    """Evaluate the deterministic policies on `eval_days` validation days every this many iterations (0: off)."""
    eval_every_s: float = 0.0
    """Also evaluate whenever the training wall time passes a multiple of this many seconds (0: off): a
    cadence the same for every method, whatever its time per iteration (what `gridedge compare` uses)."""
    eval_days: int = 8
    """Validation days of the periodic evaluation (evenly spaced over the validation split)."""
    max_pf_failure_share: float = 0.5
    """Stop (divergence) when more than this share of a rollout's power flows fail."""

    def __post_init__(self) -> None:
        problems = []
        if self.iterations is None and self.minutes is None:
            problems.append("set iterations or minutes (the training budget)")
        if self.iterations is not None and self.iterations < 0:
            problems.append(f"iterations must be >= 0, got {self.iterations}")
        if self.minutes is not None and not (self.minutes >= 0):
            problems.append(f"minutes must be >= 0, got {self.minutes}")
        for name in ("checkpoint_every", "eval_days"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            problems.append(f"eval_every must be >= 0, got {self.eval_every}")
        if not 0 <= self.eval_every_s < float("inf"):
            problems.append(f"eval_every_s must be finite and >= 0, got {self.eval_every_s}")
        if not 0 <= self.max_pf_failure_share <= 1:
            problems.append(f"max_pf_failure_share must be in [0, 1], got {self.max_pf_failure_share}")
        _raise(RunConfig, problems)


@dataclass(frozen=True)
class OptimConfig:
    """Adam on the per-agent networks, its learning-rate schedule and per-agent gradient clipping.

    The schedule is indexed by iteration over a fixed horizon, never by the run's budget: runs with different
    budgets (minutes or iterations) have the same learning rate at iteration k, so a longer budget does not
    change the early learning curve."""

    lr: float = 1e-3
    """Adam learning rate at the start of the schedule. With per-parameter steps of about ``lr`` whatever the
    gradient's size, a larger rate lets the noisy environment gradients random-walk the weights into
    step-to-step reactions to the agent's own state (docs/gradmap.md#what-the-policies-cost)."""
    lr_schedule: str = "cosine"
    """"constant", "linear" or "cosine" decay from `lr` over the first `lr_decay_iterations` iterations."""
    lr_decay_iterations: int = 1000
    """Horizon of the decay, iterations (GradMAP runs about 250-1,000 in 15 minutes on one core of the 2-core
    development machine, depending on its load); later iterations keep the final learning rate."""
    lr_final_fraction: float = 0.1
    """Learning rate at the end of the decay, as a fraction of `lr`."""
    adam_beta1: float = 0.9
    """Adam's first-moment decay."""
    adam_beta2: float = 0.999
    """Adam's second-moment decay."""
    max_grad_norm: float | None = 1.0
    """Per-agent gradient-norm clip (each agent's own parameter slice; None: off)."""

    def __post_init__(self) -> None:
        problems = []
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0 <= self.lr_final_fraction <= 1:
            problems.append(f"lr_final_fraction must be in [0, 1], got {self.lr_final_fraction}")
        if isinstance(self.lr_decay_iterations, bool) or not (
            isinstance(self.lr_decay_iterations, int) and self.lr_decay_iterations >= 1
        ):
            problems.append(f"lr_decay_iterations must be an integer >= 1, got {self.lr_decay_iterations!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            problems.append(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        _raise(OptimConfig, problems)

    def lr_at(self, iteration: int) -> float:
        """Learning rate of iteration ``iteration`` (0 for the first; the same whatever the run's budget)."""
        p = min(max(iteration / self.lr_decay_iterations, 0.0), 1.0)
        f = self.lr_final_fraction
        if self.lr_schedule == "constant":
            return self.lr
        if self.lr_schedule == "linear":
            return self.lr * (1.0 - (1.0 - f) * p)
        return self.lr * (f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * p)))

    def adam(self, params):
        """A ``torch.optim.Adam`` over ``params`` with these settings."""
        import torch

        return torch.optim.Adam(params, lr=self.lr, betas=(self.adam_beta1, self.adam_beta2))


@dataclass(frozen=True)
class NormalizerConfig:
    """Running per-agent, per-feature observation statistics (`gradmap_agent.ObsNormalizer`)."""

    normalize_obs: bool = True
    """Normalise observations per agent and feature with running statistics."""
    obs_std_min: float = 0.05
    """Lower bound of the normaliser's standard deviation."""
    obs_clip: float = 5.0
    """Normalised observations are clipped to [-obs_clip, obs_clip]."""

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be > 0, got {getattr(self, name)}"
            for name in ("obs_std_min", "obs_clip")
            if not getattr(self, name) > 0
        ]
        _raise(NormalizerConfig, problems)


@dataclass(frozen=True)
class PolicyConfig:
    """Every agent's own network: an MLP with a Gaussian head, stacked over the agents."""

    hidden: int = 16
    """Hidden width of every agent's MLP."""
    layers: int = 2
    """Hidden layers of every agent's MLP."""
    init_log_std: float = -5.0
    """Initial log standard deviation of the Gaussian (before the squash); -5, the lower end of its range
    (`gradmap_agent.networks.LOG_STD_RANGE`): std 0.0067. The exact environment gradient needs no exploration
    noise, and its noise costs money (docs/gradmap.md#what-the-policies-cost)."""
    policy_dtype: str = "float32"
    """dtype of the policy parameters and updates ("float32" or "float64"; the simulator keeps its own)."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("hidden", "layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
        if self.policy_dtype not in ("float32", "float64"):
            problems.append(f"policy_dtype must be 'float32' or 'float64', got {self.policy_dtype!r}")
        _raise(PolicyConfig, problems)

    @property
    def dtype(self):
        """The torch dtype of `policy_dtype`."""
        import torch

        return getattr(torch, self.policy_dtype)


@dataclass(frozen=True)
class LagrangianConfig:
    """Multipliers of the device and network constraints and their projected dual ascent."""

    device_multiplier_init: float = 100.0
    """Initial device multiplier, $ per unit of device violation per step ($/kW for batteries and generators,
    $/K for heat pumps; also ssl-penalty's fixed weight). With the default dual steps (at most
    ``device_dual_lr * dual_excess_clip * budget``, 0.01 $ per iteration) the device multipliers stay within a
    few $ of it: it acts as the device price. Steps that let them find their level (``device_dual_lr`` 10-100)
    cost more on the validation days (docs/gradmap.md#the-dual-steps-scale)."""
    device_dual_lr: float = 0.1
    """Dual step of the device multipliers per kWh (battery, generator) or K-step (heat pump) of an agent's
    daily violation above its budget."""
    voltage_multiplier_init: float = 1e4
    """Initial network multiplier, $ per pu of voltage violation per node and step (ssl-penalty's weight)."""
    voltage_dual_lr: float = 2e4
    """Dual step of the network multipliers per pu of violation (node, time of day; mean over days). With
    ``dual_excess_clip`` 1 a step moves a multiplier by at most 60 $ per pu-step (0.6 % of its start), so the
    (node, time) pairs that stay inside fall from 1e4 to near 0 within a 5-minute run and the violated ones rise
    (docs/gradmap.md#the-dual-steps-scale)."""
    dual_excess_clip: float = 1.0
    """Each dual step's excess (violation - budget) is clipped to +- this times the budget (per agent, per node
    and time of day), so that one step moves a multiplier by at most ``dual_lr * dual_excess_clip * budget``
    however far the early rollouts overshoot (0: no clip; a zero budget is not clipped)."""
    dual_lr_decay_iterations: float = 25.0
    """Both dual steps shrink as 1 / sqrt(1 + k / this) after k dual steps (iterations), so that the
    multipliers settle on noisy rollouts (0: constant steps)."""
    # The budgets lie above what the perfect-foresight optimum reaches with the same 0.01 pu margin (7
    # validation days, IEEE-123, 1,000 agents; docs/gradmap.md#budgets): its worst battery leaves 0.041 kWh a
    # day undelivered, its worst heat pump 0.043 K-steps, its worst generator 0.0006 kWh, its worst node and
    # time of day 0.0021 pu. The rules are device-feasible by construction (0 device violation); their worst
    # node-steps reach 0.026-0.053 pu, and 5-11 % of (node, time of day) pairs exceed the voltage budget.
    battery_undelivered_kwh_budget: float = 0.1
    """Allowed energy a battery's requests leave undelivered plus what it ends the day short of its initial
    charge, kWh per battery and day (metrics ``battery_undelivered_kwh`` + ``battery_terminal_shortfall_kwh``;
    `gradmap_agent.losses.device_constraint_violation`): its multiplier falls when the battery stays below it."""
    heatpump_comfort_k_steps_budget: float = 0.1
    """Allowed comfort violation plus terminal shortfall (K below the initial indoor temperature when heating,
    above it when cooling, counted as K-steps), per heat pump and day (metric ``heatpump_comfort_k_steps`` + the
    shortfall)."""
    generator_undelivered_kwh_budget: float = 0.05
    """Allowed energy a generator's requests leave undelivered, kWh per generator and day (metric
    ``generator_undelivered_kwh``)."""
    voltage_violation_budget: float = 3e-3
    """Allowed margin-tightened voltage violation per node and time of day (mean over days), pu: network
    multipliers fall below it. Below the 0.01 pu margin: at its budget a node is still inside the true band
    on average."""
    voltage_margin_pu: float = 0.01
    """Training constraint uses [v_min + margin, v_max - margin] (metrics always use the true band); the margin
    absorbs the deterministic policy's and the test days' difference from the training rollouts."""
    voltage_quadratic: float = 1e7
    """rho of the augmented Lagrangian's (rho / 2) w^2 per node-step, $ per pu^2 of margin-tightened voltage
    violation w: a gradient that grows with the excursion, so the worst nodes weigh most (0: off)."""
    max_multiplier: float = 1e6
    """Upper bound of every multiplier."""

    def __post_init__(self) -> None:
        problems = []
        for f in dataclasses.fields(self):
            if not 0 <= getattr(self, f.name) < float("inf"):
                problems.append(f"{f.name} must be finite and >= 0, got {getattr(self, f.name)}")
        for name in ("device_multiplier_init", "voltage_multiplier_init"):
            if getattr(self, name) > self.max_multiplier:
                problems.append(
                    f"{name} ({getattr(self, name)}) must be at most max_multiplier ({self.max_multiplier})"
                )
        _raise(LagrangianConfig, problems)


@dataclass(frozen=True)
class ReplayConfig:
    """Hard-scenario replay and parameter averaging (`gradmap_agent.replay`), off by default."""

    hard_scenario_share: float = 0.0
    """Share of each rollout's B rows that re-run, with the current policy, scenarios from a pool of the
    hardest seen so far: a scenario is a training day together with its household load draws and initial
    device states (its reset seed), scored by its largest margin-tightened voltage violation when it was last
    rolled out (0: every row is a fresh scenario)."""
    hard_scenario_pool: int = 32
    """Size of the hard-scenario pool: the scenarios with the highest scores among those rolled out so far
    (a replayed scenario's score is refreshed, so one the policy has learned to hold leaves the pool)."""
    policy_average: float = 0.0
    """Decay beta of an exponential moving average of every agent's policy parameters, updated after each
    iteration (``avg <- beta avg + (1 - beta) theta``, over about 1 / (1 - beta) iterations); the periodic
    evaluations, the exported policies and the returned params use the average (0: the last iterate)."""

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.hard_scenario_share <= 1:
            problems.append(f"hard_scenario_share must be in [0, 1], got {self.hard_scenario_share}")
        if self.hard_scenario_pool < 1:
            problems.append(f"hard_scenario_pool must be >= 1, got {self.hard_scenario_pool}")
        if not 0 <= self.policy_average < 1:
            problems.append(f"policy_average must be in [0, 1), got {self.policy_average}")
        _raise(ReplayConfig, problems)


def section(cls: type, **defaults):
    """A composed section field of a config dataclass: ``cls(**defaults)`` unless given."""
    return field(default_factory=lambda: cls(**defaults))


def _section_defaults(cls: type) -> dict:
    """Composed sections of the config dataclass ``cls``: field name -> the section's default instance."""
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            out[f.name] = default
    return out


def _sections(cls: type) -> dict[str, type]:
    """Composed sections of the config dataclass ``cls``: field name -> section class."""
    return {name: type(default) for name, default in _section_defaults(cls).items()}


def route_fields(cls: type, fields: dict) -> dict:
    """``fields`` routed to ``cls``'s own fields and its sections (``{name: value}`` and ``{section: {name:
    value}}``); a ValueError names unknown or ambiguous names and lists the known ones."""
    sections = _sections(cls)
    own = {f.name for f in dataclasses.fields(cls)} - set(sections)
    owner = {}
    for name, sec in sections.items():
        for f in dataclasses.fields(sec):
            owner.setdefault(f.name, []).append(name)
    routed: dict = {name: {} for name in sections}
    unknown = []
    for key, value in fields.items():
        if key in sections and isinstance(value, dict):
            routed[key].update(value)
        elif "." in key and key.split(".", 1)[0] in sections:
            name, sub = key.split(".", 1)
            if sub not in {f.name for f in dataclasses.fields(sections[name])}:
                unknown.append(key)
            routed[name][sub] = value
        elif key in own:
            routed[key] = value
        elif len(owner.get(key, [])) == 1:
            routed[owner[key][0]][key] = value
        else:
            unknown.append(key)
    for name, sec in sections.items():
        known = {f.name for f in dataclasses.fields(sec)}
        unknown += [f"{name}.{k}" for k in routed[name] if k not in known and f"{name}.{k}" not in unknown]
    if unknown:
        known = sorted(own | set(owner))
        raise ValueError(
            f"unknown {cls.__name__} field(s) {sorted(unknown)}; known: {known} (also as "
            f"SECTION.FIELD with SECTION in {sorted(sections)})"
        )
    return routed


def build_config(cls: type, fields: dict):
    """``cls(**...)`` from flat, dotted or sectioned ``fields``; a ValueError names a field whose value has the
    wrong type (``lr='abc'``) or an unknown field."""
    routed = route_fields(cls, fields)
    defaults = _section_defaults(cls)
    kwargs = {k: v for k, v in routed.items() if k not in defaults}
    _check_types(cls, kwargs)
    for name, default in defaults.items():
        _check_types(type(default), routed[name], prefix=f"{name}.")
        kwargs[name] = dataclasses.replace(default, **routed[name])
    return cls(**kwargs)


def _check_types(cls: type, values: dict, prefix: str = "") -> None:
    hints = typing.get_type_hints(cls)
    problems = [
        f"{prefix}{name} must be {_type_name(hints[name])}, got {value!r}"
        for name, value in values.items()
        if name in hints and not _has_type(value, hints[name])
    ]
    _raise(cls, problems)


def _has_type(value, expected) -> bool:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected in (bool, str):
        return isinstance(value, expected)
    return True  # sections and other types are checked by their own constructors


def _type_name(expected) -> str:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(expected))
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string", type(None): "none"}
    return names.get(expected, getattr(expected, "__name__", str(expected)))


def flatten_config(config) -> dict:
    """``{"name": value, "section.name": value}`` of a config dataclass or of its ``dataclasses.asdict``
    (what resume checks compare)."""
    out = {}
    items = config if isinstance(config, dict) else dataclasses.asdict(config)
    for key, value in items.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out
