"""OpenDSS import and export, and a reference solver driven through OpenDSSDirect.py.

`from_opendss` never parses .dss text itself: OpenDSS compiles the model and gridedge reads back every
element's properties through the DSS C-API, so whatever OpenDSS accepts (redirects, `like=`, RPN
expressions, line geometries) is imported as OpenDSS understood it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from gridedge_env.network.checks import check_writable, validate_feeder
from gridedge_env.network.model import (
    Bus,
    Capacitor,
    Feeder,
    FeederError,
    Line,
    Load,
    Source,
    Terminal,
    Transformer,
    Winding,
)
from gridedge_env.network.opendss_guard import check_model, quoted_path, secure_engine

# km per OpenDSS length unit code (0 = none: lengths are taken as km, only the product length*z matters)
_KM_PER_UNIT = {0: 1.0, 1: 1.609344, 2: 0.3048, 3: 1.0, 4: 1e-3, 5: 0.3048e-3, 6: 2.54e-5, 7: 1e-5, 8: 1e-6}

# OpenDSS load model -> (p exponent, q exponent); model 4 takes its exponents from CVRwatts/CVRvars
_LOAD_MODEL_EXPONENTS = {1: (0.0, 0.0), 2: (2.0, 2.0), 3: (0.0, 2.0), 5: (1.0, 1.0)}

# element classes that carry no network physics once regulator taps are fixed
_IGNORED_CLASSES = {"regcontrol", "energymeter", "monitor", "capcontrol"}
_SUPPORTED_CLASSES = {"vsource", "line", "transformer", "capacitor", "load", "reactor"}


def _dss():
    import opendssdirect as dss

    return dss


def _command(cmd: str, origin: str) -> str:
    dss = _dss()
    try:
        dss.Text.Command(cmd)
    except Exception as exc:  # DSSException; its message names the line OpenDSS could not handle
        raise FeederError(f"{origin}: OpenDSS rejected {cmd!r}: {exc}") from exc
    return dss.Text.Result()


def _property(element: str, prop: str) -> str:
    return _command(f"? {element}.{prop}", element)


def _terminals(n_conductors: int) -> list[Terminal]:
    dss = _dss()
    buses = dss.CktElement.BusNames()
    nodes = list(dss.CktElement.NodeOrder())
    return [
        Terminal(bus=b.split(".")[0].lower(), nodes=tuple(nodes[i * n_conductors : (i + 1) * n_conductors]))
        for i, b in enumerate(buses)
    ]


def _square(values, n: int) -> list[list[float]]:
    return np.asarray(values, dtype=float).reshape(n, n).tolist()


def compile_opendss(path: str | Path, *, trusted: bool = False) -> None:
    """Compile a model into the (process-global) OpenDSS engine, with a clear error if it fails.

    Unless ``trusted``, the script is checked first (`gridedge_env.network.opendss_guard.check_model`):
    a model that would write, read or run anything outside its folder raises `FeederError`. The engine's
    editor hook is off either way.
    """
    path = Path(path)
    if not path.is_file():
        raise FeederError(f"{path}: no such OpenDSS file")
    secure_engine()
    if not trusted:
        check_model(path)
    _command("Clear", str(path))
    cwd = os.getcwd()
    try:
        _command(f"Compile {quoted_path(path)}", str(path))
    finally:
        os.chdir(cwd)  # OpenDSS's Compile changes the process's working directory; undo that
    try:
        has_circuit = bool(_dss().Circuit.Name())
    except Exception:  # DSSException "There is no active circuit!"
        has_circuit = False
    if not has_circuit:
        raise FeederError(f"{path}: compiled, but defines no circuit")
    # build the bus list now: elements defined after the model's last CalcVoltageBases (or a model without
    # one) otherwise have no nodes to read back; existing voltage bases are kept
    _command("MakeBusList", str(path))


def _check_classes(origin: str) -> None:
    dss = _dss()
    for full in dss.Circuit.AllElementNames():
        cls, _, name = full.partition(".")
        cls = cls.lower()
        if cls in _IGNORED_CLASSES:
            continue
        if cls not in _SUPPORTED_CLASSES:
            dss.Circuit.SetActiveElement(full)
            if dss.CktElement.Enabled():
                raise FeederError(
                    f"{origin}: element {full} cannot be represented by gridedge "
                    f"(supported: {sorted(_SUPPORTED_CLASSES)})"
                )
        if cls == "vsource" and name.lower() != "source":
            raise FeederError(f"{origin}: element {full}: only the circuit's own source is supported")


def _read_source(origin: str) -> Source:
    dss = _dss()
    dss.Circuit.SetActiveElement("Vsource.source")
    if dss.CktElement.NumPhases() != 3:
        raise FeederError(f"{origin}: element Vsource.source: only three-phase sources are supported")
    term1, term2 = _terminals(dss.CktElement.NumConductors())
    if any(term2.nodes):
        raise FeederError(f"{origin}: element Vsource.source: bus2 must be grounded")
    value = lambda p: float(_property("Vsource.source", p))  # noqa: E731
    return Source(
        bus=term1.bus,
        nodes=term1.nodes,
        kv_base_ll=value("basekv"),
        v_pu=value("pu"),
        angle_deg=value("angle"),
        r1_ohm=value("R1"),
        x1_ohm=value("X1"),
        r0_ohm=value("R0"),
        x0_ohm=value("X0"),
    )


def _read_lines() -> list[Line]:
    dss = _dss()
    lines = []
    i = dss.Lines.First()
    while i:
        if dss.CktElement.Enabled():
            n = dss.Lines.Phases()
            km_per_unit = _KM_PER_UNIT[dss.Lines.Units()]
            t1, t2 = _terminals(dss.CktElement.NumConductors())
            lines.append(
                Line(
                    name=dss.Lines.Name().lower(),
                    terminal1=t1,
                    terminal2=t2,
                    length_km=dss.Lines.Length() * km_per_unit,
                    r_ohm_per_km=(np.asarray(_square(dss.Lines.RMatrix(), n)) / km_per_unit).tolist(),
                    x_ohm_per_km=(np.asarray(_square(dss.Lines.XMatrix(), n)) / km_per_unit).tolist(),
                    c_nf_per_km=(np.asarray(_square(dss.Lines.CMatrix(), n)) / km_per_unit).tolist(),
                    is_switch=bool(dss.Lines.IsSwitch()),
                )
            )
        i = dss.Lines.Next()
    return lines


def _read_reactors(origin: str, frequency_hz: float) -> list[Line]:
    """Series reactors as lines of 1 km with the reactor's series impedance per km and no capacitance,
    named `reactor_<name>`; a reactor whose admittance is not exactly that (a shunt reactor, a parallel
    resistance) is rejected."""
    from gridedge_env.powerflow.admittance import line_yprim

    dss = _dss()
    out = []
    for full in dss.Circuit.AllElementNames():
        cls, _, name = full.partition(".")
        if cls.lower() != "reactor":
            continue
        dss.Circuit.SetActiveElement(full)
        if not dss.CktElement.Enabled():
            continue
        n = dss.CktElement.NumPhases()
        terminals = _terminals(dss.CktElement.NumConductors())
        flat = np.asarray(dss.CktElement.YPrim())
        y = (flat[0::2] + 1j * flat[1::2]).reshape(2 * n, 2 * n) if len(terminals) == 2 else None
        if y is None or not any(terminals[1].nodes):
            raise FeederError(f"{origin}: element {full}: only series reactors (bus2 given) are supported")
        z = np.linalg.inv(y[:n, :n])
        line = Line(
            name=f"reactor_{name.lower()}",
            terminal1=terminals[0],
            terminal2=terminals[1],
            length_km=1.0,
            r_ohm_per_km=z.real.tolist(),
            x_ohm_per_km=z.imag.tolist(),
            c_nf_per_km=np.zeros((n, n)).tolist(),
        )
        ours, _ = line_yprim(line, frequency_hz)
        if np.abs(ours - y).max() > 1e-9 * np.abs(y).max():
            raise FeederError(
                f"{origin}: element {full}: only a plain series impedance is supported (no parallel "
                "resistance or shunt part)"
            )
        out.append(line)
    return out


def _read_transformers(origin: str) -> list[Transformer]:
    dss = _dss()
    regulated = {}
    i = dss.RegControls.First()
    while i:
        regulated[dss.RegControls.Transformer().lower()] = dss.RegControls.Winding()
        i = dss.RegControls.Next()
    out = []
    i = dss.Transformers.First()
    while i:
        name = dss.Transformers.Name().lower()
        element = f"Transformer.{name}"
        if dss.CktElement.Enabled():
            n_windings = dss.Transformers.NumWindings()
            if n_windings not in (2, 3):
                raise FeederError(
                    f"{origin}: element {element}: only two- and three-winding transformers are supported"
                )
            terminals = _terminals(dss.CktElement.NumConductors())
            windings = []
            for w in range(1, n_windings + 1):
                dss.Transformers.Wdg(w)
                windings.append(
                    Winding(
                        terminal=terminals[w - 1],
                        conn="delta" if dss.Transformers.IsDelta() else "wye",
                        kv=dss.Transformers.kV(),
                        kva=dss.Transformers.kVA(),
                        r_percent=dss.Transformers.R(),
                        tap_pu=dss.Transformers.Tap(),
                    )
                )
                neutral = terminals[w - 1].nodes[-1]
                if windings[-1].conn == "wye" and neutral and dss.Transformers.Rneut() >= 0:
                    raise FeederError(
                        f"{origin}: element {element}: winding {w}'s neutral impedance (rneut, xneut) is not supported"
                    )
            step = (dss.Transformers.MaxTap() - dss.Transformers.MinTap()) / dss.Transformers.NumTaps()
            out.append(
                Transformer(
                    name=name,
                    phases=dss.CktElement.NumPhases(),
                    windings=tuple(windings),
                    xhl_percent=dss.Transformers.Xhl(),
                    ppm_antifloat=float(_property(element, "ppm_antifloat")),
                    regulated_winding=regulated.get(name, 0),
                    tap_step_pu=step,
                    xht_percent=dss.Transformers.Xht() if n_windings == 3 else 0.0,
                    xlt_percent=dss.Transformers.Xlt() if n_windings == 3 else 0.0,
                    imag_percent=float(_property(element, "%imag")),
                    noloadloss_percent=float(_property(element, "%noloadloss")),
                    hv_leads_lv=_property(element, "leadlag").lower() in ("lead", "euro"),
                )
            )
        i = dss.Transformers.Next()
    return out


def _read_capacitors(origin: str) -> list[Capacitor]:
    dss = _dss()
    out = []
    i = dss.Capacitors.First()
    while i:
        name = dss.Capacitors.Name().lower()
        if dss.CktElement.Enabled():
            if dss.Capacitors.NumSteps() != 1 or not all(dss.Capacitors.States()):
                raise FeederError(f"{origin}: element Capacitor.{name}: switched multi-step banks not supported")
            t1, *rest = _terminals(dss.CktElement.NumConductors())
            if rest and any(rest[0].nodes):
                raise FeederError(f"{origin}: element Capacitor.{name}: series capacitors are not supported")
            if dss.Capacitors.IsDelta() and dss.CktElement.NumPhases() == 2:
                raise FeederError(f"{origin}: element Capacitor.{name}: two-phase delta banks are not supported")
            out.append(
                Capacitor(
                    name=name,
                    terminal=t1,
                    conn="delta" if dss.Capacitors.IsDelta() else "wye",
                    kvar=dss.Capacitors.kvar(),
                    kv=dss.Capacitors.kV(),
                )
            )
        i = dss.Capacitors.Next()
    return out


def _read_loads(origin: str) -> list[Load]:
    dss = _dss()
    out = []
    i = dss.Loads.First()
    while i:
        name = dss.Loads.Name().lower()
        if dss.CktElement.Enabled():
            model = dss.Loads.Model()
            if model == 4:
                exponents = (dss.Loads.CVRwatts(), dss.Loads.CVRvars())
            elif model in _LOAD_MODEL_EXPONENTS:
                exponents = _LOAD_MODEL_EXPONENTS[model]
            else:
                raise FeederError(
                    f"{origin}: element Load.{name}: OpenDSS load model {model} is not supported "
                    "(supported: 1, 2, 3, 4, 5)"
                )
            if not all(e in (0.0, 1.0, 2.0) for e in exponents):
                raise FeederError(
                    f"{origin}: element Load.{name}: CVR exponents {tuple(exponents)} are not supported "
                    "(gridedge models exponents 0, 1 and 2)"
                )
            (terminal,) = _terminals(dss.CktElement.NumConductors())
            out.append(
                Load(
                    name=name,
                    terminal=terminal,
                    phases=dss.Loads.Phases(),
                    conn="delta" if dss.Loads.IsDelta() else "wye",
                    kv=dss.Loads.kV(),
                    p_kw=dss.Loads.kW(),
                    q_kvar=dss.Loads.kvar(),
                    model=model,
                    p_exponent=float(exponents[0]),
                    q_exponent=float(exponents[1]),
                    vminpu=dss.Loads.Vminpu(),
                    vmaxpu=dss.Loads.Vmaxpu(),
                    vlowpu=float(_property(f"Load.{name}", "vlowpu")),
                )
            )
        i = dss.Loads.Next()
    return out


def _read_buses(origin: str) -> list[Bus]:
    dss = _dss()
    buses = []
    for name in dss.Circuit.AllBusNames():
        dss.Circuit.SetActiveBus(name)
        kv = dss.Bus.kVBase()
        if not kv > 0:
            raise FeederError(
                f"{origin}: bus {name} has no voltage base; add 'Set VoltageBases=[...]' and "
                "'CalcVoltageBases' to the model"
            )
        has_xy = dss.Bus.Coorddefined()
        buses.append(
            Bus(
                name=name.lower(),
                nodes=tuple(sorted(dss.Bus.Nodes())),
                kv_base_ln=kv,
                x=dss.Bus.X() if has_xy else None,
                y=dss.Bus.Y() if has_xy else None,
            )
        )
    return buses


def from_opendss(
    path: str | Path,
    *,
    name: str | None = None,
    regulator_tap_steps: dict[str, int] | None = None,
    settle_regulators: bool = False,
    bus_coords: str | Path | None = None,
    trusted: bool = False,
) -> Feeder:
    """Import any OpenDSS model by compiling it and reading its elements back.

    Args:
        path: the model's master .dss file.
        name: feeder name (default: the OpenDSS circuit name).
        regulator_tap_steps: fixed taps, regulator transformer name -> tap step (tap = 1 + step * 0.00625
            for a standard regulator); applied after any `settle_regulators` solve.
        settle_regulators: solve once with regulator controls active and keep the taps they settle on.
        bus_coords: optional bus-coordinate file (OpenDSS `Buscoords` format) for plots.
        trusted: compile the script without checking it (see `compile_opendss`); only for models whose
            every command you trust.

    Raises:
        FeederError: the file does not compile, an element cannot be represented, or (unless ``trusted``)
            a command would touch files or programs outside the model's folder (the message names it).
    """
    origin = str(path)
    bus_coords = Path(bus_coords).resolve() if bus_coords is not None else None
    compile_opendss(path, trusted=trusted)
    dss = _dss()
    if bus_coords is not None:
        _command(f"Buscoords {quoted_path(bus_coords)}", origin)
    if settle_regulators:
        _command("Set ControlMode=Static", origin)
        _command("Set MaxControlIter=100", origin)
        _command("Solve", origin)
        if not dss.Solution.Converged():
            raise FeederError(f"{origin}: the regulator-settling solve did not converge")
    _check_classes(origin)
    frequency_hz = float(_command("Get DefaultBaseFrequency", origin))
    feeder = Feeder(
        name=(name or dss.Circuit.Name()).lower(),
        frequency_hz=frequency_hz,
        source=_read_source(origin),
        buses=tuple(_read_buses(origin)),
        lines=tuple(_read_lines() + _read_reactors(origin, frequency_hz)),
        transformers=tuple(_read_transformers(origin)),
        capacitors=tuple(_read_capacitors(origin)),
        loads=tuple(_read_loads(origin)),
    )
    if regulator_tap_steps:
        feeder = feeder.with_regulator_taps(regulator_tap_steps)
    validate_feeder(feeder, origin)
    return feeder


# ----- export --------------------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return repr(float(x))


def _bus_spec(t: Terminal) -> str:
    return t.bus + "".join(f".{n}" for n in t.nodes)


def _matrix(m: list[list[float]]) -> str:
    # lower triangle, rows separated by '|', as OpenDSS expects for symmetric matrices
    rows = [" ".join(_fmt(m[i][j]) for j in range(i + 1)) for i in range(len(m))]
    return "(" + " | ".join(rows) + ")"


def _sequence_impedances(line: Line) -> str | None:
    """`r1=.. x1=.. r0=.. x0=.. c1=.. c0=..` (per km) when the line's matrices are balanced, else None."""
    r, x, c = (np.asarray(m) for m in (line.r_ohm_per_km, line.x_ohm_per_km, line.c_nf_per_km))
    n = len(r)
    values = {}
    for name, m in (("r", r), ("x", x), ("c", c)):
        diagonal = m[np.eye(n, dtype=bool)]
        off = m[~np.eye(n, dtype=bool)]
        if np.ptp(diagonal) > 1e-12 * abs(diagonal).max(initial=1.0) or (
            off.size and np.ptp(off) > 1e-12 * abs(diagonal).max(initial=1.0)
        ):
            return None
        self_, mutual = diagonal[0], (off[0] if off.size else 0.0)
        values[f"{name}1"], values[f"{name}0"] = self_ - mutual, self_ + 2 * mutual
    return " ".join(f"{k}={_fmt(v)}" for k, v in values.items())


def write_opendss(feeder: Feeder, path: str | Path) -> Path:
    """Write `feeder` as a self-contained OpenDSS model (taps fixed, no controls); returns the path.

    Raises:
        FeederError: a name that is not a plain identifier or a number that is not finite (a feeder from an
            untrusted file cannot add commands to the script).
    """
    check_writable(feeder, f"feeder {feeder.name!r}")
    s = feeder.source
    lines = [
        "! Written by gridedge from its own feeder data; regulator taps are fixed (no RegControl).",
        "Clear",
        f"Set DefaultBaseFrequency={_fmt(feeder.frequency_hz)}",
        f"New Circuit.{feeder.name} phases=3 bus1={_bus_spec(Terminal(s.bus, s.nodes))} "
        f"basekv={_fmt(s.kv_base_ll)} pu={_fmt(s.v_pu)} angle={_fmt(s.angle_deg)} "
        f"r1={_fmt(s.r1_ohm)} x1={_fmt(s.x1_ohm)} r0={_fmt(s.r0_ohm)} x0={_fmt(s.x0_ohm)}",
    ]
    for ln in feeder.lines:
        impedance = (
            f"units=km length={_fmt(ln.length_km)} rmatrix={_matrix(ln.r_ohm_per_km)} "
            f"xmatrix={_matrix(ln.x_ohm_per_km)} cmatrix={_matrix(ln.c_nf_per_km)}"
        )
        header = (
            f"New Line.{ln.name} phases={len(ln.r_ohm_per_km)} bus1={_bus_spec(ln.terminal1)} "
            f"bus2={_bus_spec(ln.terminal2)}"
        )
        sequence = _sequence_impedances(ln) if ln.is_switch else None
        if sequence is not None:
            # OpenDSS rebuilds a switch's impedance from sequence values at the end of its command, so a
            # switch is written with those (exact: a switch's matrices are built from them)
            lines.append(f"{header} switch=yes {sequence} units=km length={_fmt(ln.length_km)}")
        else:
            lines.append(f"{header} {impedance}")
    for t in feeder.transformers:
        three = f" xht={_fmt(t.xht_percent)} xlt={_fmt(t.xlt_percent)}" if len(t.windings) == 3 else ""
        lines.append(
            f"New Transformer.{t.name} phases={t.phases} windings={len(t.windings)} "
            f"xhl={_fmt(t.xhl_percent)}{three} ppm_antifloat={_fmt(t.ppm_antifloat)} "
            f"%imag={_fmt(t.imag_percent)} %noloadloss={_fmt(t.noloadloss_percent)} "
            f"leadlag={'lead' if t.hv_leads_lv else 'lag'}"
        )
        for w, wdg in enumerate(t.windings, start=1):
            lines.append(
                f"~ wdg={w} bus={_bus_spec(wdg.terminal)} conn={wdg.conn} kv={_fmt(wdg.kv)} "
                f"kva={_fmt(wdg.kva)} %r={_fmt(wdg.r_percent)} tap={_fmt(wdg.tap_pu)}"
            )
        if t.regulated_winding:
            # kept so that the model says which winding regulates; maxtapchange=0 holds the tap fixed
            lines.append(f"New RegControl.{t.name} transformer={t.name} winding={t.regulated_winding} maxtapchange=0")
    for c in feeder.capacitors:
        lines.append(
            f"New Capacitor.{c.name} bus1={_bus_spec(c.terminal)} "
            f"phases={sum(1 for n in c.terminal.nodes if n) if c.conn == 'wye' else len(c.terminal.nodes)} "
            f"conn={c.conn} kvar={_fmt(c.kvar)} kv={_fmt(c.kv)}"
        )
    for ld in feeder.loads:
        cvr = f" cvrwatts={_fmt(ld.p_exponent)} cvrvars={_fmt(ld.q_exponent)}" if ld.model == 4 else ""
        lines.append(
            f"New Load.{ld.name} bus1={_bus_spec(ld.terminal)} phases={ld.phases} conn={ld.conn} "
            f"kv={_fmt(ld.kv)} kw={_fmt(ld.p_kw)} kvar={_fmt(ld.q_kvar)} model={ld.model}{cvr} "
            f"vminpu={_fmt(ld.vminpu)} vmaxpu={_fmt(ld.vmaxpu)} vlowpu={_fmt(ld.vlowpu)}"
        )
    # build the bus list with OpenDSS's own base-voltage estimate, then pin each bus to the feeder's base
    bases_ll = sorted({round(b.kv_base_ln * math.sqrt(3.0), 6) for b in feeder.buses})
    lines.append(f"Set VoltageBases=[{', '.join(_fmt(v) for v in bases_ll)}]")
    lines.append("CalcVoltageBases")
    for b in feeder.buses:
        lines.append(f"SetkVBase bus={b.name} kvln={_fmt(b.kv_base_ln)}")
        if b.x is not None and b.y is not None:
            lines.append(f"SetBusXY bus={b.name} x={_fmt(b.x)} y={_fmt(b.y)}")
    lines.append("Set ControlMode=OFF")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


# ----- reference solver -----------------------------------------------------------------------------------
class OpenDSSReference:
    """OpenDSS solving the same operating points as gridedge, for validation and benchmarks.

    Compiles `model_path` (a reference model, or one written by `write_opendss`), fixes every transformer
    tap to the feeder's, turns controls off, tightens the tolerance, and adds one zero single-phase
    constant-power load per injection node (limits 0.3-3 pu: constant power wherever gridedge's injections are
    compared). The model's own loads keep their voltage limits.
    """

    def __init__(self, feeder: Feeder, model_path: str | Path, injection_nodes: list[str], tolerance=1e-12):
        dss = _dss()
        origin = str(model_path)
        compile_opendss(model_path)
        for t in feeder.transformers:
            for w, wdg in enumerate(t.windings, start=1):
                _command(f"Transformer.{t.name}.wdg={w} tap={_fmt(wdg.tap_pu)}", origin)
        for cmd in ("Set ControlMode=OFF", f"Set Tolerance={tolerance}", "Set MaxIterations=200"):
            _command(cmd, origin)
        self.injection_names = []
        for k, node in enumerate(injection_nodes):
            bus, n = node.split(".")
            kv = feeder.bus(bus).kv_base_ln
            name = f"gridedge_injection_{k}"
            _command(
                f"New Load.{name} bus1={bus}.{n} phases=1 conn=wye model=1 kv={_fmt(kv)} kw=0 kvar=0 "
                "vminpu=0.3 vmaxpu=3.0 vlowpu=0.01",
                origin,
            )
            self.injection_names.append(name)
        names = [ld.name for ld in feeder.loads]
        present = {n.lower() for n in dss.Loads.AllNames()}
        missing = [n for n in names if n not in present]
        if missing:
            raise FeederError(f"{origin}: reference model lacks loads {missing[:5]} of feeder {feeder.name!r}")
        # set voltage bases exactly as the feeder has them, then index OpenDSS's node order by ours
        for b in feeder.buses:
            _command(f"SetkVBase bus={b.name} kvln={_fmt(b.kv_base_ln)}", origin)
        order = [n.lower() for n in dss.Circuit.AllNodeNames()]
        position = {n: i for i, n in enumerate(order)}
        ours = feeder.node_names
        lacking = [n for n in ours if n not in position]
        if lacking:
            raise FeederError(f"{origin}: reference model lacks nodes {lacking[:5]}")
        self._take = np.array([position[n] for n in ours])
        self.load_names = names + self.injection_names
        self._load_index = self._indices(names)
        self._injection_index = self._indices(self.injection_names)

    @staticmethod
    def _indices(names: list[str]) -> list[int]:
        dss = _dss()
        index = {}
        i = dss.Loads.First()
        while i:
            index[dss.Loads.Name().lower()] = i
            i = dss.Loads.Next()
        return [index[n] for n in names]

    def solve(self, load_kw, load_kvar, injection_kw, injection_kvar) -> tuple[np.ndarray, bool]:
        """Set every load and injection, solve, read all node voltages (V, complex, in gridedge's order)."""
        dss = _dss()
        for idx, kw, kvar in zip(
            self._load_index + self._injection_index,
            np.concatenate([load_kw, injection_kw]),
            np.concatenate([load_kvar, injection_kvar]),
            strict=True,
        ):
            dss.Loads.Idx(idx)
            dss.Loads.kW(float(kw))
            dss.Loads.kvar(float(kvar))
        dss.Solution.Solve()
        v = np.asarray(dss.Circuit.AllBusVolts())
        return (v[0::2] + 1j * v[1::2])[self._take], bool(dss.Solution.Converged())


def source_emf_v(source: Source) -> np.ndarray:
    """Line-to-neutral EMF phasors of the source, volts, phases a, b, c."""
    mag = source.kv_base_ll * 1e3 / math.sqrt(3.0) * source.v_pu
    angles = np.deg2rad(source.angle_deg + np.array([0.0, -120.0, 120.0]))
    return mag * np.exp(1j * angles)
