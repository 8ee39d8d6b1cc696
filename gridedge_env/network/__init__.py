"""Feeder data: tables with units, OpenDSS import/export, and the shipped IEEE feeders."""

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
from gridedge_env.network.opendss import from_opendss, write_opendss
from gridedge_env.network.shipped import SHIPPED_FEEDERS, load_feeder

__all__ = [
    "Bus",
    "Capacitor",
    "Feeder",
    "FeederError",
    "Line",
    "Load",
    "Source",
    "Terminal",
    "Transformer",
    "Winding",
    "SHIPPED_FEEDERS",
    "from_opendss",
    "load_feeder",
    "write_opendss",
]
