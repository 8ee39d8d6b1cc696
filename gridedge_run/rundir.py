"""The files of a run directory, written atomically so that an interrupted run leaves a consistent one.

DIR/config.json     method, trainer config, simulator config, versions, agents per type
DIR/metrics.csv     one row per iteration (the trainer's `metric_fields`)
DIR/checkpoint.pt   everything the trainer needs to continue bit for bit (`--resume`)
DIR/policies.pt     the exported per-agent policies (`load_policies`, ``gridedge evaluate DIR``)
"""

from __future__ import annotations

import csv
import os
import pickle
import platform
from pathlib import Path

import torch

from gradmap_agent.networks import make_policy
from gridedge_env.core import sim_config_dict

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "METRICS_NAME",
    "MULTIPLIERS_FIGURE",
    "POLICIES_FORMAT",
    "POLICIES_NAME",
    "append_metrics_csv",
    "atomic_save",
    "atomic_write_text",
    "export_policies",
    "load_policies",
    "load_run_file",
    "versions",
    "write_metrics_csv",
]

CHECKPOINT_NAME = "checkpoint.pt"
POLICIES_NAME = "policies.pt"
METRICS_NAME = "metrics.csv"
CONFIG_NAME = "config.json"
MULTIPLIERS_FIGURE = "multipliers.png"
POLICIES_FORMAT = "gridedge-gradmap-policies/1"


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename it over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    """Write ``text`` to a temporary file, then rename it over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def versions() -> dict:
    """Versions the numbers depend on (recorded in config.json)."""
    try:
        from importlib.metadata import version

        pkg = version("gridedge")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        pkg = "unknown"
    return {"gridedge": pkg, "torch": torch.__version__, "python": platform.python_version()}


def write_metrics_csv(path: Path, rows: list[dict], fields: tuple[str, ...]) -> None:
    """Write metrics.csv anew with ``rows`` (missing columns empty)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in fields})
    os.replace(tmp, path)


def append_metrics_csv(path: Path, row: dict, fields: tuple[str, ...]) -> None:
    """Append one row to metrics.csv."""
    with open(path, "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore").writerow({k: row.get(k, "") for k in fields})


def export_policies(path: Path, params: dict, sim, method: str, iteration: int) -> None:
    """Write the trained per-agent policies (stacked weights + normaliser + what is needed to rebuild the
    simulator) atomically to ``path``."""
    atomic_save(
        {
            "format": POLICIES_FORMAT,
            "method": method,
            "iteration": iteration,
            "agents": list(sim.agents),
            "sim_config": sim_config_dict(sim),
            "params": params,
        },
        path,
    )


def load_run_file(path: Path, what: str, map_location="cpu") -> dict:
    """Read a checkpoint or policies file written by `atomic_save`.

    Loaded with ``torch.load(..., weights_only=True)``: tensors, numbers, strings and plain containers only,
    so a file crafted to run code when unpickled is refused before anything it names is called.

    Raises:
        ValueError: naming the file, when it cannot be read, holds other objects, or is not a dict.
    """
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):  # names a class or function the file would call
            raise ValueError(
                f"{path}: refused: the {what} holds objects other than tensors and plain data "
                "(loading it could run code)"
            ) from exc
        raise ValueError(
            f"{path}: cannot read the {what}: the file is truncated, corrupted or not written by "
            "gridedge (UnpicklingError)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - truncated or garbage files raise many kinds of errors
        raise ValueError(
            f"{path}: cannot read the {what}: the file is truncated, corrupted or not written by "
            f"gridedge ({type(exc).__name__})"
        ) from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a gridedge {what} (it holds a {type(data).__name__})")
    return data


def load_policies(path: str | os.PathLike, deterministic: bool = True, device: str | torch.device = "cpu"):
    """Load exported policies (a ``policies.pt`` file or a run directory holding one) onto ``device``.

    Returns:
        ``(policy, info)``: ``policy(obs [B, N, d]) -> actions [B, N]`` (decentralised; `make_policy`), and
        the file's contents (``sim_config``, ``agents``, ``method``, ``iteration``, ``params``).
    """
    path = Path(path)
    if path.is_dir():
        path = path / POLICIES_NAME
    if not path.is_file():
        raise ValueError(f"no exported policies at {path}")
    info = load_run_file(path, "policies file", map_location=device)
    if info.get("format") != POLICIES_FORMAT:
        raise ValueError(f"{path} is not a GradMAP policies file (format {info.get('format')!r})")
    try:
        return make_policy(info["params"], deterministic=deterministic), info
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: the policies file's weights are missing or malformed ({exc!r})") from exc
