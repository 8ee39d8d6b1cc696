"""The simulator's commands of the `gridedge` command line: ``validate`` and ``bench`` (the run layer,
`gridedge_run.cli`, adds ``train``, ``evaluate`` and ``compare``). Every subcommand that reports numbers takes
`--json` and then prints exactly one JSON object on stdout (progress and messages go to stderr)."""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch


def _progress(label: str):
    """A one-line progress display on stderr for long loops (silent when stderr is not a terminal)."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done == total else ""
        print(f"\r{label}: {done}/{total}", end=end, file=sys.stderr, flush=True)

    return show


def json_text(obj, **dumps_options) -> str:
    """``obj`` as standard JSON: NaN and infinities become ``null`` (Python's ``json`` would write the
    non-standard tokens ``NaN`` and ``Infinity``, which strict parsers reject)."""

    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(obj), allow_nan=False, **dumps_options)


def _emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(json_text(result))
        return
    for key, value in result.items():
        if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            print(_markdown_table(value))  # rows of a table (bench scaling)
            continue
        if isinstance(value, float):
            value = f"{value:.6g}"
        if not isinstance(value, (list, dict)):
            print(f"{key:>32}: {value}")


def _markdown_table(rows: list[dict]) -> str:
    """Rows as a Markdown table (floats to 3 significant digits). The columns are every key of any row, in
    first-seen order; a row without a key shows "-" there (compare's rows differ between learners and rules)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cell = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[k]) if k in row else "-" for k in columns) + " |" for row in rows]
    return "\n".join(lines)


def _cmd_validate(args) -> dict:
    from gridedge_env.validation import resolve_feeder, validate

    feeder, path = resolve_feeder(args.feeder)
    reference = args.reference if args.reference is not None else None
    result = validate(
        feeder, reference=reference, samples=args.samples, seed=args.seed, progress=_progress(f"validate {feeder.name}")
    )
    if path is not None:
        result["imported_from"] = str(path)
    return result


def _cmd_bench(args) -> dict:
    if getattr(args, "device", None) is not None:
        from gridedge_env.core import check_device

        check_device(args.device)  # a device this machine lacks: one line, exit 2
    if args.what == "env":
        from gridedge_env.adapters.pettingzoo_env import bench_parallel_env

        return bench_parallel_env(steps=args.steps, seed=args.seed, feeder=args.feeder, n_agents=args.agents)
    if args.what == "sim":
        from gridedge_env.simbench import bench_sim

        dtype = {"float64": torch.float64, "float32": torch.float32}[args.dtype]
        batch = 32 if args.batch is None else args.batch
        return bench_sim(
            args.feeder, n_agents=args.agents, batch=batch, seed=args.seed, device=args.device, dtype=dtype
        )
    if args.what == "scaling":
        from gridedge_env.validation import bench_scaling

        feeders = [name.strip() for name in args.feeders.split(",") if name.strip()]
        return bench_scaling(feeders, batch=32 if args.batch is None else args.batch, seed=args.seed)
    from gridedge_env.validation import bench_gradient, bench_powerflow, resolve_feeder

    feeder, _ = resolve_feeder(args.feeder)
    if args.batch is None:  # 1,024 operating points, 32 on feeders of thousands of nodes
        args.batch = 1024 if len(feeder.node_names) <= 3000 else 32
    if args.what == "powerflow":
        dtype = {"float64": torch.float64, "float32": torch.float32}[args.dtype]
        return bench_powerflow(feeder, batch=args.batch, seed=args.seed, device=args.device, dtype=dtype)
    return bench_gradient(feeder, batch=args.batch, seed=args.seed, device=args.device)


def add_env_commands(sub) -> None:
    """Add the simulator's own subcommands (``validate``, ``bench``) to ``sub`` (argparse subparsers)."""
    p = sub.add_parser("validate", help="check the power flow against OpenDSS on random operating points")
    p.add_argument("--feeder", default="ieee123", help="shipped feeder name, or an OpenDSS .dss model")
    p.add_argument("--reference", default=None, help="OpenDSS model to compare with (default: to_opendss's)")
    p.add_argument("--samples", type=int, default=200, help="number of random operating points")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_cmd_validate)

    p = sub.add_parser("bench", help="benchmarks that report ratios against a reference measured in the same run")
    p.add_argument(
        "what",
        choices=["powerflow", "gradient", "sim", "env", "scaling"],
        help="sim: agent-steps per second of 48-step rollouts, forward and forward + backward; "
        "env: steps per second of the PettingZoo parallel env; "
        "scaling: power-flow memory and time per feeder (a table over --feeders)",
    )
    p.add_argument("--feeder", default="ieee123")
    p.add_argument(
        "--feeders",
        default="ieee13,ieee34,ieee123,ieee8500",
        help="(scaling only) comma-separated shipped feeder names or model paths",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="batch size (default 1024, 32 on feeders of over 3,000 nodes; 32 for sim and scaling)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="(powerflow and sim)")
    p.add_argument("--agents", type=int, default=1000, help="(sim and env) number of agents")
    p.add_argument("--steps", type=int, default=144, help="(env only) timed env.step calls (48 per episode)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    """The simulator's commands alone; the ``gridedge`` command (`gridedge_run.cli`) adds train, evaluate and
    compare."""
    parser = argparse.ArgumentParser(prog="gridedge", description=__doc__)
    add_env_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Parse ``argv`` with ``parser`` (default: `build_parser`), run the command and print its result."""
    args = (parser or build_parser()).parse_args(argv)
    from gridedge_env.network import FeederError

    try:
        result = args.run(args)
    except (FeederError, ValueError, OSError) as exc:  # the user's input or files: a message, no traceback
        message = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.filename else str(exc)
        print(f"gridedge {args.command}: error: {' '.join(message.split())}", file=sys.stderr)  # one line
        return 2
    if result is not None:  # None: nothing to report (a training rank other than rank 0)
        _emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
