"""The `gridedge` command line. Every subcommand that reports numbers takes `--json` and then prints
exactly one JSON object on stdout (progress and messages go to stderr)."""

from __future__ import annotations

import argparse
import json
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


def _emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        if not isinstance(value, (list, dict)):
            print(f"{key:>32}: {value}")


def _cmd_validate(args) -> dict:
    from gridedge_env.validation import resolve_feeder, validate

    feeder, path = resolve_feeder(args.feeder)
    reference = args.reference if args.reference is not None else None
    result = validate(feeder, reference=reference, samples=args.samples, seed=args.seed,
                      progress=_progress(f"validate {feeder.name}"))
    if path is not None:
        result["imported_from"] = str(path)
    return result


def _cmd_bench(args) -> dict:
    if args.what == "env":
        from gridedge_env.adapters.pettingzoo_env import bench_parallel_env

        return bench_parallel_env(steps=args.steps, seed=args.seed, feeder=args.feeder, n_agents=args.agents)
    if args.what == "sim":
        from gridedge_env.simbench import bench_sim

        dtype = {"float64": torch.float64, "float32": torch.float32}[args.dtype]
        batch = 32 if args.batch is None else args.batch
        return bench_sim(args.feeder, n_agents=args.agents, batch=batch, seed=args.seed, device=args.device,
                         dtype=dtype)
    if args.batch is None:
        args.batch = 1024
    from gridedge_env.validation import bench_gradient, bench_powerflow, resolve_feeder

    feeder, _ = resolve_feeder(args.feeder)
    if args.what == "powerflow":
        dtype = {"float64": torch.float64, "float32": torch.float32}[args.dtype]
        return bench_powerflow(feeder, batch=args.batch, seed=args.seed, device=args.device, dtype=dtype)
    return bench_gradient(feeder, batch=args.batch, seed=args.seed, device=args.device)


def _cmd_train(args) -> dict:
    from gradmap_agent.commands import run_train

    return run_train(args)


def _cmd_evaluate(args) -> dict:
    from gradmap_agent.commands import run_evaluate

    return run_evaluate(args)


def _cmd_compare(args) -> dict:
    from pathlib import Path

    from baselines.compare import run_compare

    result = run_compare(args.preset, Path(args.out), minutes=args.minutes, methods=args.methods, jobs=args.jobs)
    if not args.json:  # the table, then the scalar fields below it
        print((Path(args.out) / "results.md").read_text())
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gridedge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check the power flow against OpenDSS on random operating points")
    p.add_argument("--feeder", default="ieee123", help="shipped feeder name, or an OpenDSS .dss model")
    p.add_argument("--reference", default=None, help="OpenDSS model to compare with (default: to_opendss's)")
    p.add_argument("--samples", type=int, default=200, help="number of random operating points")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_cmd_validate)

    p = sub.add_parser("bench", help="benchmarks that report ratios against a reference measured in the same run")
    p.add_argument("what", choices=["powerflow", "gradient", "sim", "env"],
                   help="sim: agent-steps per second of 48-step rollouts, forward and forward + backward; "
                        "env: steps per second of the PettingZoo parallel env")
    p.add_argument("--feeder", default="ieee123")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 1024; 32 for sim)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="(powerflow and sim)")
    p.add_argument("--agents", type=int, default=1000, help="(sim and env) number of agents")
    p.add_argument("--steps", type=int, default=144, help="(env only) timed env.step calls (48 per episode)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_cmd_bench)

    from gradmap_agent.commands import TRAIN_METHODS

    p = sub.add_parser("train", help="train independent per-agent policies (GradMAP, GradMA or a baseline)")
    p.add_argument("method", choices=list(TRAIN_METHODS),
                   help="gradma: GradMAP with K=1 and no trust region; ippo/mappo: baselines.ppo")
    p.add_argument("--feeder", default=None, help="shipped feeder name (default ieee123)")
    p.add_argument("--agents", type=int, default=None, help="number of agents (default 1000)")
    p.add_argument("--sim-seed", type=int, default=None, help="seed of agent placement and parameters (default 0)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None, help="training-time budget in minutes")
    budget.add_argument("--iterations", type=int, default=None, help="number of rollouts (default: the config's)")
    p.add_argument("--seed", type=int, default=None, help="trainer seed (default 0)")
    p.add_argument("--out", required=True, help="run directory (must be new or empty unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--eval-every", type=int, default=None, help="evaluate on test days every N iterations")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field of the method's config")
    p.add_argument("--sim-set", action="append", metavar="KEY=VALUE", help="override a simulator (SimConfig) field")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("evaluate", help="run trained policies or a rule decentralised on held-out days")
    p.add_argument("run_dir", nargs="?", default=None, help="run directory with exported policies (policies.pt)")
    p.add_argument("--method", default=None,
                   help="a reference instead of a run: noop, price-seeking, droop (rules) or oracle (optimum)")
    p.add_argument("--feeder", default=None, help="(with --method) shipped feeder name (default ieee123)")
    p.add_argument("--agents", type=int, default=None, help="(with --method) number of agents (default 1000)")
    p.add_argument("--sim-seed", type=int, default=None, help="(with --method) simulator seed (default 0)")
    p.add_argument("--sim-set", action="append", metavar="KEY=VALUE", help="(with --method) SimConfig field")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="(with --method oracle) override an OracleConfig field, e.g. iterations=100")
    p.add_argument("--split", default="test", choices=["test", "train", "all"])
    p.add_argument("--days", type=int, default=None, help="number of days, evenly spaced (default: all of the split)")
    p.add_argument("--batch", type=int, default=16, help="days simulated together (does not change the numbers)")
    p.add_argument("--seed", type=int, default=0, help="seed of the household draws of the evaluation days")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_cmd_evaluate)

    p = sub.add_parser("compare", help="train every method under one budget and compare them on the same test days")
    p.add_argument("--preset", default="smoke", choices=["smoke", "paper"],
                   help="smoke: IEEE-13, 20 agents, minutes in all; paper: IEEE-123, 1,000 agents, 15 min per method")
    p.add_argument("--minutes", type=float, default=None, help="training budget per method (default: the preset's)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="a subset of the methods (default: all)")
    p.add_argument("--jobs", type=int, default=1,
                   help="train this many methods at a time, each with an equal share of the CPU cores (default 1)")
    p.add_argument("--out", required=True, help="comparison directory; rerun with the same --out to continue it")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gridedge_env.network import FeederError

    try:
        result = args.run(args)
    except (FeederError, ValueError) as exc:
        print(f"gridedge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    _emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
