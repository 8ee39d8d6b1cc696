"""The feeders gridedge ships, in its own JSON format, and the command that regenerates them.

The JSON files under `data/` are produced by the importer from the OpenDSS test cases that sit beside the
project in `../shared/data` (IEEE test feeders, DSS-Extensions collection, BSD licence):

    python -m gridedge_env.network.build_shipped --data ../shared/data

Regulator taps are fixed at the published IEEE solutions (the taps each test case's own run script sets):
IEEE-13 from the commented tap lines of its master file, IEEE-34 and IEEE-123 from the second script of
their run files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gridedge_env.network.model import Feeder, FeederError

DATA_DIR = Path(__file__).with_name("data")


@dataclass(frozen=True)
class ShippedFeeder:
    """Where a shipped feeder comes from: its OpenDSS master file, bus coordinates and fixed taps."""

    master: str
    bus_coords: str | None  # None: the master file loads its own coordinates
    regulator_tap_steps: dict
    compressed: bool = False  # shipped as gzip-compressed compact JSON (<name>.json.gz)

    def file_name(self, name: str) -> str:
        return f"{name}.json.gz" if self.compressed else f"{name}.json"


SHIPPED_FEEDERS: dict[str, ShippedFeeder] = {
    "ieee13": ShippedFeeder(
        "ieee13/IEEE13Nodeckt.dss", "ieee13/IEEE13Node_BusXY.csv", {"reg1": 10, "reg2": 8, "reg3": 11}
    ),
    "ieee34": ShippedFeeder(
        "ieee34/ieee34Mod1.dss",
        "ieee34/IEEE34_BusXY.csv",
        {"reg1a": 12, "reg1b": 5, "reg1c": 5, "reg2a": 13, "reg2b": 11, "reg2c": 12},
    ),
    "ieee123": ShippedFeeder(
        "ieee123/IEEE123Master.dss",
        "ieee123/BusCoords.dat",
        {"reg1a": 7, "reg2a": -1, "reg3a": 0, "reg3c": -1, "reg4a": 8, "reg4b": 1, "reg4c": 5},
    ),
    # regulator taps as the model compiles them (1.0: its RegControls are not modelled); 4.4 MB as indented
    # JSON, 0.2 MB compressed
    "ieee8500": ShippedFeeder("ieee8500/Master.dss", None, {}, compressed=True),
}


def load_feeder(name: str) -> Feeder:
    """A shipped feeder by name (`ieee13`, `ieee34`, `ieee123`, `ieee8500`); needs nothing outside the package."""
    key = name.lower()
    if key not in SHIPPED_FEEDERS:
        raise FeederError(f"unknown feeder {name!r}; shipped feeders: {sorted(SHIPPED_FEEDERS)}")
    return Feeder.load(DATA_DIR / SHIPPED_FEEDERS[key].file_name(key))


def reference_model(name: str, data_dir: str | Path) -> Path:
    """Path of the OpenDSS reference model a shipped feeder was imported from."""
    return Path(data_dir) / SHIPPED_FEEDERS[name.lower()].master


def import_shipped(name: str, data_dir: str | Path) -> Feeder:
    """Import one shipped feeder from the OpenDSS reference models in `data_dir`."""
    from gridedge_env.network.opendss import from_opendss

    spec = SHIPPED_FEEDERS[name]
    data_dir = Path(data_dir)
    feeder = from_opendss(
        data_dir / spec.master,
        name=name,
        regulator_tap_steps=spec.regulator_tap_steps,
        bus_coords=data_dir / spec.bus_coords if spec.bus_coords else None,
    )
    taps = (
        f"regulator tap steps {spec.regulator_tap_steps}"
        if spec.regulator_tap_steps
        else "regulator taps as the model compiles them"
    )
    return feeder.replace(
        notes=f"Imported by gridedge from the OpenDSS test case {spec.master} "
        f"(DSS-Extensions electricdss-tst, BSD licence); {taps}."
    )
