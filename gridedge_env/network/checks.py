"""Validation of feeder data: what `Feeder.load` and `from_opendss` accept.

A feeder file is data from anywhere, and a feeder is written back as an OpenDSS script, so every record is
checked before it is used: names are plain identifiers (they cannot carry OpenDSS commands or leave a
folder when used as a file name), numbers are finite and physical, impedance matrices match the phases of
their terminals, load models are known, and every bus node is connected to the source.
"""

from __future__ import annotations

import dataclasses
import math
import re

from gridedge_env.network.model import Feeder, FeederError

# letters, digits and a few marks OpenDSS names use; no whitespace, '.', '/', '\', quotes, brackets, '=',
# ',', '!' or '|', so a name can neither end an OpenDSS command nor name another folder
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-+#$%&@^~:]*")
CONNECTIONS = ("wye", "delta")
LOAD_MODELS = (1, 2, 3, 4, 5)  # OpenDSS load models gridedge represents
EXPONENTS = (0.0, 1.0, 2.0)  # voltage exponents the power flow models
_LISTED_ISLAND_BUSES = 10


def check_writable(feeder: Feeder, origin: str = "feeder") -> None:
    """Every text field is a plain name and every number finite, so the feeder can be written as a script.

    Raises:
        FeederError: naming the field, e.g. ``loads[3].name``.
    """
    for where, value in _fields(feeder, "", skip=("notes",)):
        if isinstance(value, str):
            if not NAME.fullmatch(value):
                raise FeederError(
                    f"{origin}: {where} = {value!r} is not a valid name (letters, digits and "
                    f"_-+#$%&@^~: only, starting with a letter, digit or _)"
                )
        elif isinstance(value, float) and not math.isfinite(value):
            raise FeederError(f"{origin}: {where} = {value!r} is not finite")


def validate_feeder(feeder: Feeder, origin: str = "feeder") -> None:
    """Check a feeder's types, values, shapes, load models and connectivity.

    Raises:
        FeederError: naming the first problem (the element and field, or the islanded buses).
    """
    problems = _Problems(origin)
    problems.positive("frequency_hz", feeder.frequency_hz)
    buses = {}
    for i, bus in enumerate(feeder.buses):
        where = f"buses[{i}] ({bus.name})"
        problems.unique(where, bus.name, buses, bus)
        problems.nodes(f"{where}.nodes", bus.nodes, allow_ground=False)
        problems.positive(f"{where}.kv_base_ln", bus.kv_base_ln)
        for axis in ("x", "y"):
            if getattr(bus, axis) is not None:
                problems.number(f"{where}.{axis}", getattr(bus, axis))
    s = feeder.source
    problems.terminal("source", s.bus, s.nodes, buses)
    if len(s.nodes) != 3:
        problems.fail(f"source.nodes {s.nodes!r}: the source is three-phase (3 nodes)")
    for key in ("kv_base_ll", "v_pu"):
        problems.positive(f"source.{key}", getattr(s, key))
    for key in ("angle_deg", "r1_ohm", "x1_ohm", "r0_ohm", "x0_ohm"):
        problems.number(f"source.{key}", getattr(s, key))
    names: dict = {}
    for i, line in enumerate(feeder.lines):
        where = f"lines[{i}] ({line.name})"
        problems.unique(where, line.name, names, line)
        problems.terminal(f"{where}.terminal1", line.terminal1.bus, line.terminal1.nodes, buses)
        problems.terminal(f"{where}.terminal2", line.terminal2.bus, line.terminal2.nodes, buses)
        problems.positive(f"{where}.length_km", line.length_km)
        n = len(line.terminal1.nodes)
        if len(line.terminal2.nodes) != n:
            problems.fail(f"{where}: terminal1 has {n} conductors, terminal2 {len(line.terminal2.nodes)}")
        for key in ("r_ohm_per_km", "x_ohm_per_km", "c_nf_per_km"):
            problems.square(f"{where}.{key}", getattr(line, key), n)
        if any(line.r_ohm_per_km[k][k] < 0 for k in range(n)):
            problems.fail(f"{where}.r_ohm_per_km: negative self resistance")
    names = {}
    for i, t in enumerate(feeder.transformers):
        where = f"transformers[{i}] ({t.name})"
        problems.unique(where, t.name, names, t)
        problems.integer(f"{where}.phases", t.phases, (1, 2, 3))
        if len(t.windings) not in (2, 3):
            problems.fail(f"{where}: a transformer has two or three windings")
        problems.integer(f"{where}.regulated_winding", t.regulated_winding, range(len(t.windings) + 1))
        problems.positive(f"{where}.xhl_percent", t.xhl_percent)
        problems.positive(f"{where}.tap_step_pu", t.tap_step_pu)
        problems.non_negative(f"{where}.ppm_antifloat", t.ppm_antifloat)
        for key in ("xht_percent", "xlt_percent", "imag_percent", "noloadloss_percent"):
            problems.non_negative(f"{where}.{key}", getattr(t, key))
        for w, winding in enumerate(t.windings, start=1):
            at = f"{where}.windings[{w - 1}]"
            problems.terminal(f"{at}.terminal", winding.terminal.bus, winding.terminal.nodes, buses)
            if len(winding.terminal.nodes) != t.phases + 1:
                problems.fail(
                    f"{at}.terminal: {len(winding.terminal.nodes)} conductors for {t.phases} phases "
                    f"(a winding has phases + 1)"
                )
            problems.choice(f"{at}.conn", winding.conn, CONNECTIONS)
            for key in ("kv", "kva", "tap_pu"):
                problems.positive(f"{at}.{key}", getattr(winding, key))
            problems.non_negative(f"{at}.r_percent", winding.r_percent)
    names = {}
    for i, c in enumerate(feeder.capacitors):
        where = f"capacitors[{i}] ({c.name})"
        problems.unique(where, c.name, names, c)
        problems.terminal(f"{where}.terminal", c.terminal.bus, c.terminal.nodes, buses)
        problems.choice(f"{where}.conn", c.conn, CONNECTIONS)
        problems.positive(f"{where}.kv", c.kv)
        problems.number(f"{where}.kvar", c.kvar)
    names = {}
    for i, ld in enumerate(feeder.loads):
        where = f"loads[{i}] ({ld.name})"
        problems.unique(where, ld.name, names, ld)
        problems.terminal(f"{where}.terminal", ld.terminal.bus, ld.terminal.nodes, buses)
        problems.integer(f"{where}.phases", ld.phases, (1, 2, 3))
        if len(ld.terminal.nodes) < ld.phases:
            problems.fail(f"{where}.terminal: {len(ld.terminal.nodes)} conductors for {ld.phases} phases")
        problems.choice(f"{where}.conn", ld.conn, CONNECTIONS)
        problems.positive(f"{where}.kv", ld.kv)
        problems.number(f"{where}.p_kw", ld.p_kw)
        problems.number(f"{where}.q_kvar", ld.q_kvar)
        problems.integer(f"{where}.model", ld.model, LOAD_MODELS)
        for key in ("vminpu", "vmaxpu", "vlowpu"):
            problems.non_negative(f"{where}.{key}", getattr(ld, key))
        for key in ("p_exponent", "q_exponent"):
            problems.number(f"{where}.{key}", getattr(ld, key))
            if getattr(ld, key) not in EXPONENTS:
                problems.fail(f"{where}.{key} = {getattr(ld, key)!r}: the power flow models exponents 0, 1, 2")
    check_writable(feeder, origin)  # names, and numbers of fields checked nowhere above
    check_connected(feeder, origin)


def check_connected(feeder: Feeder, origin: str = "feeder") -> None:
    """Every bus node is connected to the source through series elements (lines, switches, transformers).

    Raises:
        FeederError: naming the buses (or bus nodes) that form islands.
    """
    parent: dict = {}

    def find(a):
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def join(a, b):
        parent[find(a)] = find(b)

    for record in _elements(feeder):
        if hasattr(record, "terminal1") and hasattr(record, "terminal2"):  # lines, switches: conductor k to k
            t1, t2 = record.terminal1, record.terminal2
            for n1, n2 in zip(t1.nodes, t2.nodes, strict=False):
                if n1 and n2:
                    join((t1.bus, n1), (t2.bus, n2))
        elif hasattr(record, "windings"):  # transformers: the windings couple every node they touch
            nodes = [(w.terminal.bus, n) for w in record.windings for n in w.terminal.nodes if n]
            for node in nodes[1:]:
                join(nodes[0], node)
    root = find((feeder.source.bus, feeder.source.nodes[0]))
    for n in feeder.source.nodes[1:]:
        join((feeder.source.bus, n), root)
    root = find(root)
    islanded = [(b.name, n) for b in feeder.buses for n in b.nodes if find((b.name, n)) != root]
    if not islanded:
        return
    whole = [b.name for b in feeder.buses if b.nodes and all(find((b.name, n)) != root for n in b.nodes)]
    partial = sorted({f"{bus}.{n}" for bus, n in islanded if bus not in set(whole)})
    parts = [p for p in (_listed("bus", whole), _listed("node", partial)) if p]
    verb = "is" if len(whole) + len(partial) == 1 else "are"
    raise FeederError(
        f"{origin}: {' and '.join(parts)} {verb} not connected to the source bus {feeder.source.bus!r} "
        "(islands cannot be solved)"
    )


def _listed(kind: str, names: list[str]) -> str:
    if len(names) <= 1:
        return f"{kind} {names[0]}" if names else ""
    shown = ", ".join(names[:_LISTED_ISLAND_BUSES]) + (", ..." if len(names) > _LISTED_ISLAND_BUSES else "")
    return f"{len(names)} {kind}{'es' if kind == 'bus' else 's'} ({shown})"


def _elements(feeder: Feeder):
    """Every element record of the feeder (lines, transformers, capacitors, loads, ...)."""
    for f in dataclasses.fields(feeder):
        value = getattr(feeder, f.name)
        if isinstance(value, tuple) and f.name != "buses":
            yield from value


def _fields(obj, prefix: str, skip=()):
    """(path, value) of every leaf of a record: dataclass fields, tuple/list items."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            if f.name not in skip:
                yield from _fields(getattr(obj, f.name), f"{prefix}.{f.name}" if prefix else f.name)
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from _fields(item, f"{prefix}[{i}]")
    else:
        yield prefix, obj


class _Problems:
    """Raise a FeederError for the first field that fails a check."""

    def __init__(self, origin: str):
        self.origin = origin

    def fail(self, message: str) -> None:
        raise FeederError(f"{self.origin}: {message}")

    def number(self, where: str, value) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(f"{where} = {value!r} is not a finite number")

    def positive(self, where: str, value) -> None:
        self.number(where, value)
        if value <= 0:
            self.fail(f"{where} = {value!r} must be positive")

    def non_negative(self, where: str, value) -> None:
        self.number(where, value)
        if value < 0:
            self.fail(f"{where} = {value!r} must not be negative")

    def integer(self, where: str, value, allowed) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
            self.fail(f"{where} = {value!r} is not one of {list(allowed)}")

    def choice(self, where: str, value, allowed) -> None:
        if value not in allowed:
            self.fail(f"{where} = {value!r} is not one of {list(allowed)}")

    def unique(self, where: str, name: str, seen: dict, record) -> None:
        if name in seen:
            self.fail(f"{where}: the name {name!r} is used twice")
        seen[name] = record

    def nodes(self, where: str, nodes, allow_ground: bool) -> None:
        low = 0 if allow_ground else 1
        if (
            not isinstance(nodes, tuple)
            or not nodes
            or any(isinstance(n, bool) or not isinstance(n, int) or n < low for n in nodes)
        ):
            self.fail(f"{where} = {nodes!r}: expected node numbers (1, 2, 3, ...{'; 0 = ground' * allow_ground})")

    def terminal(self, where: str, bus: str, nodes, buses: dict) -> None:
        self.nodes(f"{where}.nodes", nodes, allow_ground=True)
        if bus not in buses:
            self.fail(f"{where}: no bus {bus!r} in the feeder")
        unknown = sorted({n for n in nodes if n and n not in buses[bus].nodes})
        if unknown:
            self.fail(f"{where}: bus {bus!r} has no node {unknown} (its nodes: {list(buses[bus].nodes)})")

    def square(self, where: str, matrix, n: int) -> None:
        if (
            not isinstance(matrix, (list, tuple))
            or len(matrix) != n
            or any(not isinstance(row, (list, tuple)) or len(row) != n for row in matrix)
        ):
            self.fail(f"{where}: expected a {n} x {n} matrix for {n} conductors")
        for row in matrix:
            for value in row:
                self.number(where, value)
