"""Tests of ``gridedge_env.network``: OpenDSS import and export, shipped feeders, the JSON format, bad input.

Reference numbers come from OpenDSS itself, driven through OpenDSSDirect.py (0.9.x, DSS C-API) in the same
test run: it compiles either the IEEE test cases in ``../shared/data`` (DSS-Extensions electricdss-tst,
commit 3b20839) or small models these tests write to a temporary folder. Tests that need ``../shared/data``
are skipped with a message when it is absent; everything else runs anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import opendssdirect as dss
import pytest

import gridedge_env
from gridedge_env.cli import main as cli_main
from gridedge_env.network import Capacitor, Feeder, FeederError, Terminal, from_opendss, load_feeder
from gridedge_env.network import opendss as opendss_module
from gridedge_env.network.opendss import compile_opendss
from gridedge_env.network.shipped import DATA_DIR, SHIPPED_FEEDERS, import_shipped, reference_model
from gridedge_env.powerflow.admittance import capacitor_yprim, element_yprims
from gridedge_env.validation import validate

REPO = Path(__file__).resolve().parents[1]
FEEDERS = ["ieee13", "ieee34", "ieee123"]

# |Y_gridedge - Y_opendss| <= YPRIM_RTOL * max|Y_opendss|, element by element
YPRIM_RTOL = 1e-12
# to_opendss writes floats with repr(); OpenDSS reads them back and converts per-length units
ROUND_TRIP_RTOL = 1e-9
# size of one step of the standard 32-step, +/-10 % regulator
TAP_STEP_PU = 0.00625

# published regulator tap steps: IEEE-123 and IEEE-34 from the second script of their Run_*.dss files,
# IEEE-13 from the commented `Transformer.RegN.Taps=[...]` lines of its master file
PUBLISHED_TAP_STEPS = {
    "ieee13": {"reg1": 10, "reg2": 8, "reg3": 11},
    "ieee34": {"reg1a": 12, "reg1b": 5, "reg1c": 5, "reg2a": 13, "reg2b": 11, "reg2c": 12},
    "ieee123": {"reg1a": 7, "reg2a": -1, "reg3a": 0, "reg3c": -1, "reg4a": 8, "reg4b": 1, "reg4c": 5},
}

# sizes of the shipped feeders: buses, phase nodes, lines (switches among them), transformers (regulators
# among them), capacitors, loads
SHIPPED_SIZES = {
    "ieee13": {
        "buses": 16,
        "nodes": 41,
        "lines": 12,
        "switches": 1,
        "transformers": 5,
        "regulators": 3,
        "capacitors": 2,
        "loads": 15,
    },
    "ieee34": {
        "buses": 37,
        "nodes": 95,
        "lines": 32,
        "switches": 0,
        "transformers": 8,
        "regulators": 6,
        "capacitors": 2,
        "loads": 68,
    },
    "ieee123": {
        "buses": 132,
        "nodes": 278,
        "lines": 126,
        "switches": 8,
        "transformers": 8,
        "regulators": 7,
        "capacitors": 4,
        "loads": 91,
    },
}

# A source, a 3-phase line, a single-phase line, a wye and a delta load (and a single-phase one).
SMALL_MODEL = """\
Clear
Set DefaultBaseFrequency=60
New Circuit.small basekv=12.47 pu=1.0 phases=3 bus1=src r1=0.1 x1=0.5 r0=0.2 x0=1.0
New Line.trunk phases=3 bus1=src bus2=a length=1 units=km r1=0.3 x1=0.6 r0=0.6 x0=1.5 c1=10 c0=5
New Line.lateral phases=1 bus1=a.2 bus2=b.2 length=0.5 units=km r1=0.4 x1=0.7 r0=0.8 x0=1.6 c1=8 c0=4
New Load.wye3 bus1=a phases=3 conn=wye kv=12.47 kw=300 kvar=100 model=1
New Load.delta3 bus1=a phases=3 conn=delta kv=12.47 kw=200 kvar=80 model=2
New Load.single bus1=b.2 phases=1 conn=wye kv=7.2 kw=50 kvar=20 model=5
{extra}Set VoltageBases=[12.47]
CalcVoltageBases
"""

# Every kind of element gridedge represents, with unit conversions (m, mi), a switch, a two-phase line, a
# delta-wye transformer, a single-phase transformer with taps on both windings, wye capacitors and the load
# models 1 to 5 (4 with exponents 1 and 2).
RICH_MODEL = """\
Clear
Set DefaultBaseFrequency=60
New Circuit.rich basekv=12.47 pu=1.02 angle=10 phases=3 bus1=src r1=0.1 x1=0.5 r0=0.2 x0=1.0
New Line.main phases=3 bus1=src bus2=a length=1.2 units=km r1=0.3 x1=0.6 r0=0.6 x0=1.5 c1=10 c0=5
New Line.twophase phases=2 bus1=a.1.3 bus2=t.1.3 length=300 units=m
~ rmatrix=(0.4 | 0.1 0.4) xmatrix=(0.8 | 0.3 0.8) cmatrix=(9 | -2 9)
New Line.lateral phases=1 bus1=a.2 bus2=b.2 length=0.5 units=mi r1=0.4 x1=0.7 r0=0.8 x0=1.6 c1=8 c0=4
New Line.sw phases=3 bus1=a bus2=s switch=yes
New Transformer.dy phases=3 windings=2 buses=[s c] conns=[delta wye] kvs=[12.47 0.48] kvas=[500 500] xhl=5 %r=0.5
New Transformer.reg phases=1 windings=2 buses=[a.1 r.1] conns=[wye wye] kvs=[7.2 7.2] kvas=[500 500] xhl=1
~ %r=0.01 taps=[1.0125 0.975]
New Capacitor.c3 bus1=a phases=3 kvar=300 kv=12.47
New Capacitor.c1 bus1=b.2 phases=1 kvar=50 kv=7.2
New Load.l1 bus1=a.3 phases=1 kv=7.2 kw=25 kvar=5 model=1
New Load.l3 bus1=c phases=3 kv=0.48 kw=100 kvar=30 model=3
New Load.l4 bus1=a.1 phases=1 kv=7.2 kw=40 kvar=10 model=4 cvrwatts=1 cvrvars=2
New Load.l5 bus1=r.1 phases=1 kv=7.2 kw=30 kvar=10 model=5
New Load.l2 bus1=t.1.3 phases=1 conn=delta kv=12.47 kw=60 kvar=20 model=2
Set VoltageBases=[12.47, 0.48]
CalcVoltageBases
"""


def _write(tmp_path: Path, text: str, name: str = "model.dss") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _small_model(tmp_path: Path, extra: str = "", name: str = "small.dss") -> Path:
    """SMALL_MODEL with `extra` element definitions before its voltage bases."""
    return _write(tmp_path, SMALL_MODEL.format(extra=extra), name)


# ----- element admittances against OpenDSS's YPrim ---------------------------------------------------------
def _opendss_element(element: str) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """YPrim (complex, square, siemens) and conductors `(bus, node)` of an element of the compiled circuit."""
    dss.Circuit.SetActiveElement(element)
    flat = np.asarray(dss.CktElement.YPrim())  # interleaved re, im
    y = flat[0::2] + 1j * flat[1::2]
    n = math.isqrt(len(y))
    assert n * n == len(y), f"{element}: YPrim of {len(y)} entries is not square"
    n_cond = dss.CktElement.NumConductors()
    buses = [b.split(".")[0].lower() for b in dss.CktElement.BusNames()]
    nodes = list(dss.CktElement.NodeOrder())
    conductors = [(buses[i // n_cond], nodes[i]) for i in range(len(nodes))]
    return y.reshape(n, n), conductors


def _opendss_network_elements() -> set[str]:
    """Enabled elements of the compiled circuit that belong in the admittance matrix, lower case."""
    out = set()
    for full in dss.Circuit.AllElementNames():
        if full.split(".")[0].lower() in {"vsource", "line", "transformer", "capacitor", "reactor"}:
            dss.Circuit.SetActiveElement(full)
            if dss.CktElement.Enabled():
                out.add(full.lower().replace("reactor.", "line.reactor_"))  # series reactors import as lines
    return out


def _assert_yprims_match_opendss(feeder: Feeder) -> int:
    """Every element of `feeder` against the circuit compiled in OpenDSS now; returns how many were checked.

    Vsource and shunt capacitors have a grounded second terminal in OpenDSS; only the first terminal's
    conductors are compared for them.
    """
    dss.Solution.BuildYMatrix(0, 0)  # OpenDSS refreshes YPrim of edited elements only when it builds Y
    ours = element_yprims(feeder)
    assert {name.lower() for name, _, _ in ours} == _opendss_network_elements()
    for name, y, conductors in ours:
        ref, ref_conductors = _opendss_element(name.replace("Line.reactor_", "Reactor."))
        n = len(conductors)
        assert y.shape == (n, n), name
        if name.split(".")[0] in ("Vsource", "Capacitor") and ref.shape == (2 * n, 2 * n):
            assert all(node == 0 for _, node in ref_conductors[n:]), f"{name}: second terminal not grounded"
            ref, ref_conductors = ref[:n, :n], ref_conductors[:n]
        assert conductors == ref_conductors, name
        err = np.abs(y - ref).max() / np.abs(ref).max()
        assert err <= YPRIM_RTOL, f"{name}: relative YPrim error {err:.3g}"
    return len(ours)


@pytest.mark.parametrize("name", FEEDERS)
def test_yprims_match_opendss(shared_data: Path, name: str) -> None:
    feeder = from_opendss(reference_model(name, shared_data))
    checked = _assert_yprims_match_opendss(feeder)
    assert checked == 1 + len(feeder.lines) + len(feeder.transformers) + len(feeder.capacitors)


@pytest.mark.parametrize("name", FEEDERS)
def test_yprims_match_opendss_with_fixed_taps(shared_data: Path, name: str) -> None:
    steps = SHIPPED_FEEDERS[name].regulator_tap_steps
    feeder = from_opendss(reference_model(name, shared_data), regulator_tap_steps=steps)
    assert sum(w.tap_pu != 1.0 for t in feeder.transformers for w in t.windings) >= 3
    for t in feeder.transformers:  # the same taps in OpenDSS
        for w, wdg in enumerate(t.windings, start=1):
            dss.Text.Command(f"Transformer.{t.name}.wdg={w} tap={wdg.tap_pu!r}")
    dss.Transformers.Name(next(iter(steps)))
    dss.Transformers.Wdg(2)
    assert dss.Transformers.Tap() == pytest.approx(1 + steps[next(iter(steps))] * TAP_STEP_PU, abs=1e-12)
    _assert_yprims_match_opendss(feeder)


def test_yprims_match_opendss_small_model_of_every_element_kind(tmp_path: Path) -> None:
    feeder = from_opendss(_write(tmp_path, RICH_MODEL))
    taps = {t.name: tuple(w.tap_pu for w in t.windings) for t in feeder.transformers}
    assert taps == {"dy": (1.0, 1.0), "reg": (1.0125, 0.975)}
    assert _assert_yprims_match_opendss(feeder) == 9


@pytest.mark.parametrize(
    ("bus1", "phases", "nodes"),
    [("a", 3, (1, 2, 3)), ("a.1.2", 1, (1, 2))],
    ids=["three-phase", "single-phase"],
)
def test_delta_capacitor_yprim_matches_opendss(tmp_path: Path, bus1: str, phases: int, nodes: tuple) -> None:
    # built by hand: the importer cannot read delta capacitors yet (see test_delta_capacitor_imports)
    compile_opendss(_small_model(tmp_path))
    dss.Text.Command(f"New Capacitor.cd bus1={bus1} phases={phases} conn=delta kvar=150 kv=12.47")
    dss.Solution.BuildYMatrix(0, 0)
    ref, ref_conductors = _opendss_element("Capacitor.cd")
    y, conductors = capacitor_yprim(Capacitor("cd", Terminal("a", nodes), "delta", 150.0, 12.47), 60.0)
    assert conductors == ref_conductors
    assert np.abs(y - ref).max() <= YPRIM_RTOL * np.abs(ref).max()


# ----- shipped feeders ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FEEDERS)
def test_shipped_feeder_loads_from_the_package_alone(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    def no_opendss():
        raise AssertionError("load_feeder must not need OpenDSS or the reference models")

    monkeypatch.setattr(opendss_module, "_dss", no_opendss)
    feeder = load_feeder(name.upper())  # names are case-insensitive
    assert feeder.name == name
    assert DATA_DIR.is_relative_to(Path(gridedge_env.__file__).parent)  # package data, not ../shared
    assert "electricdss-tst" in feeder.notes


@pytest.mark.parametrize("name", FEEDERS)
def test_shipped_feeder_sizes(name: str) -> None:
    f = load_feeder(name)
    sizes = {
        "buses": len(f.buses),
        "nodes": len(f.node_names),
        "lines": len(f.lines),
        "switches": sum(ln.is_switch for ln in f.lines),
        "transformers": len(f.transformers),
        "regulators": sum(t.regulated_winding > 0 for t in f.transformers),
        "capacitors": len(f.capacitors),
        "loads": len(f.loads),
    }
    assert sizes == SHIPPED_SIZES[name]
    assert len({b.name for b in f.buses}) == len(f.buses)
    assert f.frequency_hz == 60.0
    # bus coordinates came along (IEEE-123's two dangling ends of open switches have none)
    assert sum(b.x is None for b in f.buses) == (2 if name == "ieee123" else 0)


@pytest.mark.parametrize("name", FEEDERS)
def test_shipped_regulator_taps(name: str) -> None:
    feeder = load_feeder(name)
    steps = PUBLISHED_TAP_STEPS[name]
    assert SHIPPED_FEEDERS[name].regulator_tap_steps == steps
    for t in feeder.transformers:
        w1, w2 = (w.tap_pu for w in t.windings)
        assert w1 == 1.0, t.name
        if t.name in steps:
            assert t.regulated_winding == 2
            assert t.tap_step_pu == pytest.approx(TAP_STEP_PU, rel=1e-12)
            assert w2 == pytest.approx(1.0 + steps[t.name] * TAP_STEP_PU, abs=1e-12), t.name
        else:
            assert (t.regulated_winding, w2) == (0, 1.0), t.name
    assert {t.name for t in feeder.transformers} >= set(steps)


def test_published_taps_are_those_of_the_reference_scripts(shared_data: Path) -> None:
    force = re.compile(r"^Transformer\.(\w+)\.wdg=2\s+Tap=\(0\.00625\s+(-?\d+)", re.I | re.M)
    for name, script in [("ieee34", "ieee34/Run_IEEE34Mod1.dss"), ("ieee123", "ieee123/Run_IEEE123Bus.DSS")]:
        text = (shared_data / script).read_text()
        assert {k.lower(): int(v) for k, v in force.findall(text)} == PUBLISHED_TAP_STEPS[name]
    commented = re.compile(r"^// Transformer\.(\w+)\.Taps=\[1\.0 ([\d.]+)\]", re.I | re.M)
    text = (shared_data / "ieee13/IEEE13Nodeckt.dss").read_text()
    found = {k.lower(): round((float(v) - 1) / TAP_STEP_PU) for k, v in commented.findall(text)}
    assert found == PUBLISHED_TAP_STEPS["ieee13"]


@pytest.mark.parametrize("name", FEEDERS)
def test_shipped_json_equals_a_fresh_import(shared_data: Path, name: str) -> None:
    # dataclass equality, exact (floats survive JSON exactly); `notes` is not compared
    assert import_shipped(name, shared_data) == load_feeder(name)


def test_settle_regulators_keeps_whole_tap_steps(shared_data: Path) -> None:
    feeder = from_opendss(reference_model("ieee34", shared_data), settle_regulators=True)
    regs = [t for t in feeder.transformers if t.regulated_winding]
    assert len(regs) == 6
    steps = [(t.windings[1].tap_pu - 1.0) / t.tap_step_pu for t in regs]
    assert all(abs(s - round(s)) < 1e-9 and -16 <= s <= 16 for s in steps)
    assert any(round(s) != 0 for s in steps)  # the controls did move the taps
    # explicit steps are applied after settling
    pinned = from_opendss(
        reference_model("ieee34", shared_data), settle_regulators=True, regulator_tap_steps={"REG1A": -2}
    )
    assert pinned.transformers[2].name == "reg1a"
    assert pinned.transformers[2].windings[1].tap_pu == pytest.approx(1 - 2 * TAP_STEP_PU, abs=1e-12)


# ----- the JSON format ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FEEDERS)
def test_json_round_trip(tmp_path: Path, name: str) -> None:
    feeder = load_feeder(name).with_regulator_taps({next(iter(PUBLISHED_TAP_STEPS[name])): -3})
    path = tmp_path / f"{name}.json"
    feeder.save(path)
    back = Feeder.load(path)
    assert back == feeder
    assert back.to_dict() == feeder.to_dict()  # notes included
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.json"]  # no leftover .tmp
    feeder.save(path)  # overwriting works too
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.json"]


def test_json_save_never_leaves_a_half_written_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = load_feeder("ieee13"), load_feeder("ieee34")
    path = tmp_path / "feeder.json"
    old.save(path)
    real_write_text = Path.write_text

    def crash_halfway(self: Path, data: str, *args, **kwargs):
        real_write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", crash_halfway)
    with pytest.raises(OSError, match="disk full"):
        new.save(path)
    monkeypatch.undo()
    assert Feeder.load(path) == old


# ----- to_opendss --------------------------------------------------------------------------------------------
def _assert_close(a, b, what: str, rtol: float = ROUND_TRIP_RTOL) -> None:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, what
    scale = max(np.abs(a).max(initial=0.0), 1e-300)
    assert np.abs(a - b).max(initial=0.0) <= rtol * scale, what


def _assert_same_network(ours: Feeder, back: Feeder) -> None:
    """Element by element: names, wiring, impedances, taps, loads; bus order and coordinates may differ."""
    assert back.name == ours.name
    assert back.frequency_hz == ours.frequency_hz
    s, r = ours.source, back.source
    assert (r.bus, r.nodes) == (s.bus, s.nodes)
    _assert_close(
        [r.kv_base_ll, r.v_pu, r.angle_deg, r.r1_ohm, r.x1_ohm, r.r0_ohm, r.x0_ohm],
        [s.kv_base_ll, s.v_pu, s.angle_deg, s.r1_ohm, s.x1_ohm, s.r0_ohm, s.x0_ohm],
        "source",
    )

    buses = {b.name: b for b in back.buses}
    assert set(buses) == {b.name for b in ours.buses}
    for b in ours.buses:
        assert buses[b.name].nodes == b.nodes, b.name
        _assert_close(buses[b.name].kv_base_ln, b.kv_base_ln, f"bus {b.name} base", rtol=1e-12)

    assert [ln.name for ln in back.lines] == [ln.name for ln in ours.lines]
    for a, b in zip(ours.lines, back.lines, strict=True):
        assert (b.terminal1, b.terminal2) == (a.terminal1, a.terminal2), a.name
        _assert_close(b.length_km, a.length_km, f"line {a.name} length")
        for field in ("r_ohm_per_km", "x_ohm_per_km", "c_nf_per_km"):
            _assert_close(getattr(b, field), getattr(a, field), f"line {a.name} {field}")

    assert [t.name for t in back.transformers] == [t.name for t in ours.transformers]
    for a, b in zip(ours.transformers, back.transformers, strict=True):
        assert b.phases == a.phases, a.name
        _assert_close(
            [b.xhl_percent, b.ppm_antifloat, b.tap_step_pu],
            [a.xhl_percent, a.ppm_antifloat, a.tap_step_pu],
            f"transformer {a.name}",
        )
        for wa, wb in zip(a.windings, b.windings, strict=True):
            assert (wb.terminal, wb.conn) == (wa.terminal, wa.conn), a.name
            _assert_close(
                [wb.kv, wb.kva, wb.r_percent, wb.tap_pu],
                [wa.kv, wa.kva, wa.r_percent, wa.tap_pu],
                f"transformer {a.name} winding",
            )

    assert back.capacitors == ours.capacitors
    assert back.loads == ours.loads  # names, wiring, kW, kvar, kV, model and voltage exponents


@pytest.mark.parametrize("name", FEEDERS)
def test_to_opendss_round_trip(tmp_path: Path, name: str) -> None:
    feeder = load_feeder(name)
    cwd = os.getcwd()
    path = feeder.to_opendss(tmp_path / f"{name}.dss")
    assert path == tmp_path / f"{name}.dss"
    back = from_opendss(path)
    assert os.getcwd() == cwd  # OpenDSS's Compile changes directory; the importer restores it
    _assert_same_network(feeder, back)


def test_to_opendss_round_trip_of_an_edited_feeder(tmp_path: Path) -> None:
    feeder = from_opendss(_write(tmp_path, RICH_MODEL))
    loads = tuple(dataclasses.replace(ld, p_kw=ld.p_kw * 1.5) for ld in feeder.loads)
    edited = feeder.replace(loads=loads).with_regulator_taps({"reg": 9})
    back = from_opendss(edited.to_opendss(tmp_path / "edited.dss"))
    _assert_same_network(edited, back)
    assert back.transformers[1].windings[1].tap_pu == pytest.approx(1 + 9 * TAP_STEP_PU, abs=1e-12)


def test_to_opendss_keeps_switches_and_regulators(tmp_path: Path) -> None:
    feeder = load_feeder("ieee123")
    back = from_opendss(feeder.to_opendss(tmp_path / "ieee123.dss"))
    assert [ln.is_switch for ln in back.lines] == [ln.is_switch for ln in feeder.lines]
    assert [t.regulated_winding for t in back.transformers] == [t.regulated_winding for t in feeder.transformers]


def test_import_restores_the_working_directory(shared_data: Path, tmp_path: Path) -> None:
    cwd = os.getcwd()
    from_opendss(reference_model("ieee123", shared_data))  # redirects to files beside it
    assert os.getcwd() == cwd
    with pytest.raises(FeederError):
        from_opendss(_write(tmp_path, "garbage\n", "garbage.dss"))
    assert os.getcwd() == cwd


# ----- bad input ---------------------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nosuch.dss"
    with pytest.raises(FeederError, match=rf"{re.escape(str(path))}: no such OpenDSS file"):
        from_opendss(path)


def test_file_that_does_not_compile(tmp_path: Path) -> None:
    path = _write(tmp_path, "this is not an OpenDSS model @@@\nNew Frobnicator.x y=z\n", "garbage.dss")
    with pytest.raises(FeederError, match=rf"{re.escape(str(path))}: OpenDSS rejected .*Compile"):
        from_opendss(path)


def test_file_that_defines_no_circuit(tmp_path: Path) -> None:
    path = _write(tmp_path, "! a comment and nothing else\nClear\n", "empty.dss")
    with pytest.raises(FeederError, match=rf"{re.escape(str(path))}: compiled, but defines no circuit"):
        from_opendss(path)


UNSUPPORTED = {
    "generator": (
        "New Generator.g1 bus1=a phases=3 kv=12.47 kw=100 pf=1\n",
        r"element Generator\.g1 cannot be represented by gridedge",
    ),
    "pvsystem": (
        "New PVSystem.pv1 bus1=a phases=3 kv=12.47 kva=100 pmpp=100\n",
        r"element PVSystem\.pv1 cannot be represented by gridedge",
    ),
    "four-winding": (
        "New Transformer.t4 phases=3 windings=4 buses=[a c d e] conns=[wye wye wye wye] "
        "kvs=[12.47 12.47 12.47 12.47] kvas=[500 500 500 500]\n",
        r"element Transformer\.t4: only two- and three-winding transformers are supported",
    ),
    "neutral-impedance": (
        "New Transformer.tn phases=3 windings=2 buses=[a c.1.2.3.4] conns=[wye wye] kvs=[12.47 12.47] "
        "kvas=[500 500] wdg=2 rneut=5\n",
        r"element Transformer\.tn: winding 2's neutral impedance",
    ),
    "shunt-reactor": (
        "New Reactor.shunt bus1=a phases=3 kvar=100 kv=12.47\n",
        r"element Reactor\.shunt: only series reactors",
    ),
    "load-model-8": (
        "New Load.zipv bus1=a.1 phases=1 kv=7.2 kw=10 kvar=3 model=8\n",
        r"element Load\.zipv: OpenDSS load model 8 is not supported",
    ),
    "multi-step-capacitor": (
        "New Capacitor.cs bus1=a phases=3 numsteps=2 kvar=[100 100] kv=12.47\n",
        r"element Capacitor\.cs: switched multi-step banks not supported",
    ),
    "series-capacitor": (
        "New Capacitor.cx bus1=a bus2=c phases=3 kvar=100 kv=12.47\n",
        r"element Capacitor\.cx: series capacitors are not supported",
    ),
    "second-source": (
        "New Vsource.second bus1=b phases=3 basekv=12.47\n",
        r"element Vsource\.second: only the circuit's own source is supported",
    ),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_element_gridedge_cannot_represent(tmp_path: Path, case: str) -> None:
    extra, message = UNSUPPORTED[case]
    path = _small_model(tmp_path, extra)
    with pytest.raises(FeederError, match=rf"^{re.escape(str(path))}: {message}"):
        from_opendss(path)


def test_single_phase_source_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, SMALL_MODEL.format(extra="").replace("phases=3 bus1=src", "phases=1 bus1=src"))
    with pytest.raises(FeederError, match=r"element Vsource\.source: only three-phase sources are supported"):
        from_opendss(path)


def test_disabled_unsupported_element_is_ignored(tmp_path: Path) -> None:
    path = _small_model(tmp_path, "New Generator.g1 bus1=a phases=3 kv=12.47 kw=100 pf=1 enabled=no\n")
    assert [ld.name for ld in from_opendss(path).loads] == ["wye3", "delta3", "single"]


def test_model_without_voltage_bases(tmp_path: Path) -> None:
    text = SMALL_MODEL.format(extra="").replace("Set VoltageBases=[12.47]\nCalcVoltageBases\n", "")
    path = _write(tmp_path, text)
    with pytest.raises(FeederError, match=r"bus \w+ has no voltage base"):
        from_opendss(path)


def test_element_defined_after_the_voltage_bases(tmp_path: Path) -> None:
    path = _write(tmp_path, SMALL_MODEL.format(extra="") + "New Capacitor.late bus1=a phases=3 kvar=100 kv=12.47\n")
    assert [c.name for c in from_opendss(path).capacitors] == ["late"]


def test_delta_capacitor_imports(tmp_path: Path) -> None:
    path = _small_model(tmp_path, "New Capacitor.cd bus1=a phases=3 conn=delta kvar=150 kv=12.47\n")
    feeder = from_opendss(path)
    assert feeder.capacitors == (Capacitor("cd", Terminal("a", (1, 2, 3)), "delta", 150.0, 12.47),)
    _assert_yprims_match_opendss(feeder)


def test_unknown_shipped_feeder() -> None:
    with pytest.raises(
        FeederError,
        match=r"unknown feeder 'nosuch'; shipped feeders: \['ieee123', 'ieee13', "
        r"'ieee34', 'ieee8500'\]",
    ):
        load_feeder("nosuch")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"name": "x", "buses": []}', r"not a gridedge feeder file"),
        ("not json at all", r"cannot read feeder file"),
        ('{"format": "gridedge-feeder", "version": 1, "name": "x"}', r"malformed feeder data: KeyError\('source'\)"),
    ],
    ids=["other-json", "not-json", "malformed"],
)
def test_json_that_is_not_a_feeder(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text, "feeder.json")
    with pytest.raises(FeederError, match=rf"^{re.escape(str(path))}: {message}"):
        Feeder.load(path)


def test_json_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FeederError, match=r"nosuch\.json: cannot read feeder file"):
        Feeder.load(tmp_path / "nosuch.json")


def test_json_list_is_not_a_feeder(tmp_path: Path) -> None:
    path = _write(tmp_path, "[1, 2, 3]", "feeder.json")
    with pytest.raises(FeederError, match="not a gridedge feeder file"):
        Feeder.load(path)


def test_json_with_a_wrong_version(tmp_path: Path) -> None:
    path = tmp_path / "feeder.json"
    path.write_text(json.dumps({**load_feeder("ieee13").to_dict(), "version": 99}))
    with pytest.raises(FeederError, match=rf"^{re.escape(str(path))}: feeder format version 99 is not supported"):
        Feeder.load(path)


def test_regulator_taps_of_an_unknown_transformer() -> None:
    with pytest.raises(FeederError, match=r"feeder 'ieee123' has no transformer named \['nosuch'\]"):
        load_feeder("ieee123").with_regulator_taps({"reg1a": 2, "NoSuch": 1})


def test_regulator_tap_on_winding_1(tmp_path: Path) -> None:
    extra = (
        "New Transformer.r1 phases=1 windings=2 buses=[a.1 f.1] conns=[wye wye] kvs=[7.2 7.2] kvas=[500 500]\n"
        "New RegControl.c1 transformer=r1 winding=1 vreg=122 ptratio=60\n"
    )
    feeder = from_opendss(_small_model(tmp_path, extra), regulator_tap_steps={"r1": 4})
    (t,) = feeder.transformers
    assert t.regulated_winding == 1
    assert [w.tap_pu for w in t.windings] == pytest.approx([1 + 4 * TAP_STEP_PU, 1.0], abs=1e-12)


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_unknown_feeder_exits_2(capsys: pytest.CaptureFixture[str], as_json: bool) -> None:
    assert cli_main(["validate", "--feeder", "nosuch"] + (["--json"] if as_json else [])) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "error" in err and "unknown feeder 'nosuch'" in err and "ieee123" in err


def test_cli_missing_model_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nosuch.dss"
    assert cli_main(["validate", "--feeder", str(path), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"{path}: no such OpenDSS file" in err


# ----- a model written here, end to end ------------------------------------------------------------------------
def test_small_model_imports_and_validates(tmp_path: Path) -> None:
    path = _small_model(tmp_path)
    feeder = from_opendss(path)
    assert [(ln.name, len(ln.r_ohm_per_km)) for ln in feeder.lines] == [("trunk", 3), ("lateral", 1)]
    assert [(ld.name, ld.conn, ld.phases, ld.model, ld.p_exponent) for ld in feeder.loads] == [
        ("wye3", "wye", 3, 1, 0.0),
        ("delta3", "delta", 3, 2, 2.0),
        ("single", "wye", 1, 5, 1.0),
    ]
    assert feeder.loads[2].terminal == Terminal("b", (2, 0))
    assert feeder.bus("B").kv_base_ln == pytest.approx(12.47 / math.sqrt(3), rel=1e-12)
    result = validate(feeder, reference=path, samples=5)
    assert result["all_converged"]
    assert result["max_abs_err_pu"] < 1e-6


def test_rich_model_validates_against_itself_and_its_export(tmp_path: Path) -> None:
    path = _write(tmp_path, RICH_MODEL)
    feeder = from_opendss(path)
    assert [(ld.model, ld.p_exponent, ld.q_exponent) for ld in feeder.loads] == [
        (1, 0.0, 0.0),
        (3, 0.0, 2.0),
        (4, 1.0, 2.0),
        (5, 1.0, 1.0),
        (2, 2.0, 2.0),
    ]
    for reference in (path, None):  # the model itself, and the one to_opendss writes
        result = validate(feeder, reference=reference, samples=5)
        assert result["all_converged"]
        assert result["max_abs_err_pu"] < 1e-6


def test_cli_validates_an_opendss_model_on_the_fly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _small_model(tmp_path)
    assert cli_main(["validate", "--feeder", str(path), "--reference", str(path), "--samples", "3", "--json"]) == 0
    out, _ = capsys.readouterr()
    result = json.loads(out)  # exactly one JSON object on stdout
    assert result["imported_from"] == str(path)
    assert result["samples"] == 3 and result["all_converged"] and result["max_abs_err_pu"] < 1e-6


# ----- the front door: README, docs and CI run what they say ---------------------------------------------------
def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.DOTALL)


@pytest.mark.parametrize("doc", ["README.md", "docs/feeders.md"])
def test_doc_python_examples_run(doc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _python_blocks(REPO / doc)
    assert blocks, f"{doc} has no python example"
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace: dict = {"__name__": "__doc_example__"}
    for k, block in enumerate(blocks):
        exec(compile(block, f"{doc} (python block {k + 1})", "exec"), namespace)


def test_readme_set_up_commands_and_ci_agree() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^pip install .*$", quick, flags=re.M)
    assert commands == [
        "pip install torch==2.13.0 && pip install -e . && gridedge compare --preset quick --jobs 2 --out runs/quick",
        'pip install torch==2.13.0 && pip install -e ".[test,render,sb3,torchrl,rllib]" && python -m pytest -q',
    ]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "set -euo pipefail" in ci
    assert "pip install torch==2.13.0" in ci and 'pip install -e ".[test,render,sb3,torchrl,rllib]"' in ci
    assert "python -m pytest -q" in ci
    assert os.access(REPO / ".ci" / "run", os.X_OK)
    regenerate = "python -m gridedge_env.network.build_shipped --data ../shared/data"
    assert regenerate in readme and regenerate in (REPO / "docs" / "feeders.md").read_text(encoding="utf-8")


# ----- element types beyond the IEEE 13/34/123 feeders: small synthetic cases -------------------------------
NEW_ELEMENTS = """
New Reactor.sub bus1=a bus2=r phases=3 r=0.01 x=0.4
New Transformer.yd phases=3 windings=2 buses=[r.1.2.3.0 yd] conns=[wye delta] kvs=[12.47 4.16] kvas=[500 500] xhl=6
New Transformer.dy phases=3 windings=2 buses=[r dy] conns=[delta wye] kvs=[12.47 0.48] kvas=[300 300] xhl=5
New Transformer.dyl phases=3 windings=2 buses=[r dyl] conns=[delta wye] kvs=[12.47 0.48] kvas=[300 300] leadlag=lead
New Transformer.oda phases=1 windings=2 buses=[r.1.0 od.1.2] conns=[wye delta] kvs=[7.2 4.16] kvas=[200 200] xhl=3
New Transformer.odb phases=1 windings=2 buses=[r.2.0 od.2.3] conns=[wye delta] kvs=[7.2 4.16] kvas=[200 200] xhl=3
New Transformer.ct phases=1 windings=3 buses=[r.3 ct.1.0 ct.0.2] kvs=[7.2 0.12 0.12] kvas=[25 25 25]
~ %rs=[0.6 1.2 1.2] xhl=2.04 xht=2.04 xlt=1.36 %imag=0.5 %noloadloss=0.2
New Line.tpx phases=2 bus1=ct.1.2 bus2=house.1.2 length=30 units=m rmatrix=[0.5 0.2 | 0.2 0.5]
~ xmatrix=[0.3 0.1 | 0.1 0.3]
New Load.house bus1=house.1.2 phases=2 conn=wye kv=0.208 kw=6 kvar=2 vminpu=0.88
New Load.od bus1=od.1.2.3 phases=3 conn=delta kv=4.16 kw=150 kvar=50
New Load.yd bus1=yd.1.2.3 phases=3 conn=delta kv=4.16 kw=300 kvar=100
New Load.dy bus1=dy phases=3 kv=0.48 kw=100 kvar=30
New Load.dyl bus1=dyl phases=3 kv=0.48 kw=100 kvar=30
New Capacitor.stab bus1=od phases=3 kv=4.16 kvar=50
New Transformer.odreg1 phases=1 windings=2 buses=[r.1.2 odr.1.2] kvs=[12.47 12.47] kvas=[2000 2000] xhl=0.1 %r=0.01
~ wdg=2 tap=1.025
New Transformer.odreg2 phases=1 windings=2 buses=[r.3.2 odr.3.2] kvs=[12.47 12.47] kvas=[2000 2000] xhl=0.1 %r=0.01
~ wdg=2 tap=0.99375
New RegControl.odreg1 transformer=odreg1 winding=2 vreg=120 ptratio=104
New Line.delta3w phases=3 bus1=odr bus2=dw length=0.8 units=km r1=0.3 x1=0.6 r0=0.6 x0=1.5 c1=10 c0=5
New Load.dw bus1=dw phases=3 conn=delta kv=12.47 kw=400 kvar=150
New Transformer.cdreg1 phases=1 windings=2 buses=[a.1.2 cdr.1.2] kvs=[12.47 12.47] kvas=[2000 2000] xhl=0.1
~ wdg=2 tap=1.0125
New Transformer.cdreg2 phases=1 windings=2 buses=[a.2.3 cdr.2.3] kvs=[12.47 12.47] kvas=[2000 2000] xhl=0.1
~ wdg=2 tap=1.00625
New Transformer.cdreg3 phases=1 windings=2 buses=[a.3.1 cdr.3.1] kvs=[12.47 12.47] kvas=[2000 2000] xhl=0.1
~ wdg=2 tap=1.01875
New Load.cd bus1=cdr phases=3 conn=delta kv=12.47 kw=300 kvar=100
"""


def test_new_element_types_match_opendss(tmp_path: Path) -> None:
    """Series reactor, wye-delta and delta-wye (ANSI and lead), open-wye/open-delta bank, centre-tapped
    three-winding service transformer with magnetising branch, triplex line and split-phase load, open- and
    closed-delta line-to-line regulators with taps feeding delta three-wire lines and loads: YPrims to
    1e-12 and voltages (the model's own load limits) to 1e-7 pu of OpenDSS."""
    path = _write(
        tmp_path,
        SMALL_MODEL.format(extra=NEW_ELEMENTS).replace(
            "Set VoltageBases=[12.47]", "Set VoltageBases=[12.47, 4.16, 0.48, 0.208]"
        ),
        "new_elements.dss",
    )
    feeder = from_opendss(path)
    assert any(t.hv_leads_lv for t in feeder.transformers)
    ct = next(t for t in feeder.transformers if t.name == "ct")
    assert len(ct.windings) == 3 and ct.imag_percent == 0.5 and ct.xlt_percent == 1.36
    assert "reactor_sub" in {ln.name for ln in feeder.lines}
    _assert_yprims_match_opendss(feeder)
    result = validate(feeder, reference=path, samples=8)
    # every row OpenDSS solves, gridedge solves; the closed-delta regulator bank's floating zero sequence
    # (held by anti-float admittances only) leaves both at about 3e-8 pu of each other there
    assert result["only_opendss_converged"] == 0 and result["both_converged"] >= 6, result
    assert result["base_case_err_pu"] <= 1e-7 and result["max_abs_err_pu"] <= 1e-7, result
    back = from_opendss(feeder.to_opendss(tmp_path / "back.dss"))
    assert [t.name for t in back.transformers] == [t.name for t in feeder.transformers]
    assert next(t for t in back.transformers if t.name == "ct") == ct


@pytest.mark.slow
def test_ieee8500_yprims_match_opendss(shared_data: Path) -> None:
    """Every element of the IEEE 8500-node feeder (reactor, delta-wye substation, regulators, 1,177
    centre-tapped service transformers, triplex lines) against OpenDSS's YPrim."""
    feeder = from_opendss(shared_data / "ieee8500" / "Master.dss")
    assert sum(len(t.windings) == 3 for t in feeder.transformers) == 1177
    checked = _assert_yprims_match_opendss(feeder)
    assert checked == 1 + len(feeder.lines) + len(feeder.transformers) + len(feeder.capacitors)


def test_ieee8500_ships_compressed_and_equals_a_fresh_import(shared_data: Path) -> None:
    feeder = load_feeder("ieee8500")
    assert (DATA_DIR / "ieee8500.json.gz").stat().st_size < 400_000
    assert (
        len(feeder.buses),
        len(feeder.node_names),
        len(feeder.lines),
        len(feeder.transformers),
        len(feeder.capacitors),
        len(feeder.loads),
    ) == (4876, 8531, 3699, 1190, 10, 1177)
    assert "electricdss-tst" in feeder.notes and all(ld.vminpu == 0.88 for ld in feeder.loads)
    assert import_shipped("ieee8500", shared_data) == feeder


def test_gzip_feeder_round_trip(tmp_path: Path) -> None:
    feeder = load_feeder("ieee13")
    feeder.save(tmp_path / "f.json.gz")
    assert Feeder.load(tmp_path / "f.json.gz") == feeder
    (tmp_path / "bad.json.gz").write_bytes(b"not gzip")
    with pytest.raises(FeederError, match="bad.json.gz: cannot read feeder file"):
        Feeder.load(tmp_path / "bad.json.gz")
