"""Feeder data: plain tables with units in the field names.

A `Feeder` describes a three-phase (possibly unbalanced) distribution network the way OpenDSS does, one
record per element. Every element connects to buses through *terminals*; a terminal lists, per conductor,
the bus node it is wired to (1, 2, 3 for phases; 4+ for explicit neutrals; 0 for ground). Keeping the
conductor lists exactly as OpenDSS reports them means wye, delta, single-phase and two-phase connections all
need no special cases downstream.

Sign convention for loads: positive `p_kw`/`q_kvar` = consumption.

The project's own file format is this model written as JSON (`Feeder.save` / `Feeder.load`).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

FORMAT_VERSION = 1


class FeederError(ValueError):
    """A feeder file or model that cannot be read, or an element that gridedge cannot represent."""


@dataclass(frozen=True)
class Terminal:
    """Where one end of an element is wired: a bus and one bus node per conductor (0 = ground)."""

    bus: str
    nodes: tuple[int, ...]


@dataclass(frozen=True)
class Bus:
    """A bus with its phase nodes, line-to-neutral voltage base and optional plot coordinates."""

    name: str
    nodes: tuple[int, ...]
    kv_base_ln: float
    x: float | None = None
    y: float | None = None


@dataclass(frozen=True)
class Source:
    """Three-phase Thevenin source (OpenDSS `Vsource`): EMF behind sequence impedances, wye-grounded."""

    bus: str
    nodes: tuple[int, ...]
    kv_base_ll: float
    v_pu: float
    angle_deg: float
    r1_ohm: float
    x1_ohm: float
    r0_ohm: float
    x0_ohm: float


@dataclass(frozen=True)
class Line:
    """Series R+jX with shunt capacitance split between both ends (pi model), per-length matrices.

    Matrices are `phases x phases`, row-major nested lists. Switches are short lines with `is_switch=True`.
    """

    name: str
    terminal1: Terminal
    terminal2: Terminal
    length_km: float
    r_ohm_per_km: list[list[float]]
    x_ohm_per_km: list[list[float]]
    c_nf_per_km: list[list[float]]
    is_switch: bool = False


@dataclass(frozen=True)
class Winding:
    """One transformer winding: rated kV (line-to-line for 2- and 3-phase, coil voltage for 1-phase)."""

    terminal: Terminal
    conn: str  # "wye" or "delta"
    kv: float
    kva: float
    r_percent: float
    tap_pu: float = 1.0


@dataclass(frozen=True)
class Transformer:
    """Two- or three-winding transformer as OpenDSS models it; regulators are transformers too.

    `tap_step_pu` is the size of one regulator step (0.00625 pu for the standard 32-step, +/-10 %
    regulator); `regulated_winding` names the winding whose tap a regulator moves (0 when not a regulator).
    Short-circuit reactances are % on winding 1's kVA: `xhl_percent` between windings 1 and 2,
    `xht_percent` 1 and 3, `xlt_percent` 2 and 3 (three windings only). The magnetising branch
    (`imag_percent`, `noloadloss_percent`, % on winding 1's kVA) sits on winding 2, as in OpenDSS.
    `hv_leads_lv` is OpenDSS's `leadlag=lead` (European vector groups); False is ANSI (the default), and
    together with the windings it fixes how delta coils are wired.
    """

    name: str
    phases: int
    windings: tuple[Winding, ...]
    xhl_percent: float
    ppm_antifloat: float = 0.0
    regulated_winding: int = 0
    tap_step_pu: float = 0.00625
    xht_percent: float = 0.0
    xlt_percent: float = 0.0
    imag_percent: float = 0.0
    noloadloss_percent: float = 0.0
    hv_leads_lv: bool = False


@dataclass(frozen=True)
class Capacitor:
    """Shunt capacitor bank: total kvar at rated kV (line-to-line for 2- and 3-phase, can rating for 1)."""

    name: str
    terminal: Terminal
    conn: str
    kvar: float
    kv: float


@dataclass(frozen=True)
class Load:
    """A load in OpenDSS's terms, with its voltage dependence as exponents.

    Power follows `p = p_kw * (|v| / v_nominal) ** p_exponent` and likewise for q: exponent 0 is constant
    power (OpenDSS model 1), 1 constant current magnitude (model 5), 2 constant impedance (model 2).
    `kv` is OpenDSS's load kV: line-to-line for wye loads of 2+ phases and for delta loads, the rated
    voltage for single-phase wye loads.

    Outside `vminpu`..`vmaxpu` (pu of that rated voltage) the law changes as OpenDSS's does: above
    `vmaxpu` a constant impedance, between `vlowpu` and `vminpu` a current interpolated linearly in the
    voltage magnitude, below `vlowpu` the impedance of the nominal power (see docs/powerflow.md).
    """

    name: str
    terminal: Terminal
    phases: int
    conn: str
    kv: float
    p_kw: float
    q_kvar: float
    model: int
    p_exponent: float
    q_exponent: float
    vminpu: float = 0.95
    vmaxpu: float = 1.05
    vlowpu: float = 0.50


@dataclass(frozen=True)
class Feeder:
    """A distribution feeder: buses, source, lines/switches, transformers/regulators, capacitors, loads."""

    name: str
    frequency_hz: float
    source: Source
    buses: tuple[Bus, ...]
    lines: tuple[Line, ...] = ()
    transformers: tuple[Transformer, ...] = ()
    capacitors: tuple[Capacitor, ...] = ()
    loads: tuple[Load, ...] = ()
    notes: str = field(default="", compare=False)

    # ----- lookups -------------------------------------------------------------------------------------
    def bus(self, name: str) -> Bus:
        """The bus called `name` (case-insensitive), or a FeederError naming it."""
        for bus in self.buses:
            if bus.name == name.lower():
                return bus
        raise FeederError(f"feeder {self.name!r} has no bus {name!r}")

    @property
    def node_names(self) -> list[str]:
        """All non-ground phase nodes as 'bus.node', in the order used by the power flow."""
        return [f"{b.name}.{n}" for b in self.buses for n in b.nodes]

    def replace(self, **changes) -> Feeder:
        """A copy with some fields replaced (feeders are immutable)."""
        return dataclasses.replace(self, **changes)

    def with_regulator_taps(self, tap_steps: dict[str, int]) -> Feeder:
        """A copy whose named regulators sit at fixed tap steps (tap = 1 + step * tap_step_pu)."""
        by_name = {t.name: t for t in self.transformers}
        unknown = sorted(set(k.lower() for k in tap_steps) - set(by_name))
        if unknown:
            raise FeederError(f"feeder {self.name!r} has no transformer named {unknown}")
        new = []
        for t in self.transformers:
            if t.name in {k.lower() for k in tap_steps}:
                step = {k.lower(): v for k, v in tap_steps.items()}[t.name]
                w = (t.regulated_winding or 2) - 1
                windings = list(t.windings)
                windings[w] = dataclasses.replace(windings[w], tap_pu=1.0 + step * t.tap_step_pu)
                t = dataclasses.replace(t, windings=tuple(windings))
            new.append(t)
        return self.replace(transformers=tuple(new))

    # ----- the project's file format ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": "gridedge-feeder", "version": FORMAT_VERSION, **dataclasses.asdict(self)}

    def save(self, path: str | Path) -> None:
        """Write the feeder as JSON, atomically (a crash never leaves a half-written file); a path ending in
        `.gz` gets compact, gzip-compressed JSON."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        if path.suffix == ".gz":
            tmp.write_bytes(gzip.compress(json.dumps(self.to_dict(), separators=(",", ":")).encode(), mtime=0))
        else:
            tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)

    @classmethod
    def from_dict(cls, data: dict, origin: str = "<dict>") -> Feeder:
        """Build and validate a feeder (`gridedge_env.network.checks.validate_feeder`) from `to_dict` data."""
        if not isinstance(data, dict) or data.get("format") != "gridedge-feeder":
            raise FeederError(f"{origin}: not a gridedge feeder file (missing format='gridedge-feeder')")
        if data.get("version") != FORMAT_VERSION:
            raise FeederError(f"{origin}: feeder format version {data.get('version')} is not supported")
        try:
            feeder = _feeder_from_plain(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise FeederError(f"{origin}: malformed feeder data: {exc!r}") from exc
        from gridedge_env.network.checks import validate_feeder

        validate_feeder(feeder, origin)
        return feeder

    @classmethod
    def load(cls, path: str | Path) -> Feeder:
        """Read a feeder written by `save` (gzip-compressed when the path ends in `.gz`), validated
        (`FeederError` names the first problem)."""
        path = Path(path)
        try:
            text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
            data = json.loads(text)
        except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FeederError(f"{path}: cannot read feeder file: {exc}") from exc
        return cls.from_dict(data, origin=str(path))

    def to_opendss(self, path: str | Path) -> Path:
        """Write an OpenDSS model of this feeder; see `gridedge_env.network.opendss.write_opendss`."""
        from gridedge_env.network.opendss import write_opendss

        return write_opendss(self, path)


def _terminal(d: dict) -> Terminal:
    return Terminal(bus=d["bus"], nodes=tuple(int(n) for n in d["nodes"]))


def _feeder_from_plain(d: dict) -> Feeder:
    source = d["source"]
    return Feeder(
        name=d["name"],
        frequency_hz=float(d["frequency_hz"]),
        source=Source(**{**source, "nodes": tuple(source["nodes"])}),
        buses=tuple(Bus(**{**b, "nodes": tuple(b["nodes"])}) for b in d["buses"]),
        lines=tuple(
            Line(**{**ln, "terminal1": _terminal(ln["terminal1"]), "terminal2": _terminal(ln["terminal2"])})
            for ln in d["lines"]
        ),
        transformers=tuple(
            Transformer(
                **{
                    **t,
                    "windings": tuple(Winding(**{**w, "terminal": _terminal(w["terminal"])}) for w in t["windings"]),
                }
            )
            for t in d["transformers"]
        ),
        capacitors=tuple(Capacitor(**{**c, "terminal": _terminal(c["terminal"])}) for c in d["capacitors"]),
        loads=tuple(Load(**{**ld, "terminal": _terminal(ld["terminal"])}) for ld in d["loads"]),
        notes=d.get("notes", ""),
    )
