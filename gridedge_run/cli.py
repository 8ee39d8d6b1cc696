"""The ``gridedge`` command: the simulator's ``validate`` and ``bench`` (`gridedge_env.cli`) and the run layer's
``train``, ``evaluate``, ``compare``, ``tune`` and ``profile``. Every subcommand that reports numbers takes
`--json` and then prints exactly one JSON object on stdout (progress and messages go to stderr)."""

from __future__ import annotations

import argparse
import os
import sys

from gridedge_env.cli import add_env_commands
from gridedge_env.cli import main as env_main
from gridedge_env.scenarios import SPLITS
from gridedge_run.methods import TRAIN_METHODS

QUIET_HELP = "no progress bars or messages on stderr (bars are drawn only when stderr is a terminal)"


def _cmd_train(args) -> dict | None:
    from gridedge_run.commands import run_train

    if args.nproc is not None:
        return _launch_ranks(args)
    rank = int(os.environ.get("RANK", "0"))  # torchrun's global rank of this process
    try:
        result = run_train(args)
    except ValueError:
        if rank != 0:  # every rank meets the same user error; rank 0 reports it
            raise SystemExit(2) from None
        raise
    return result if rank == 0 else None  # one summary: rank 0's


def _launch_ranks(args) -> None:
    """``gridedge train --nproc N``: this command without ``--nproc``, in N processes started by torch's own
    launcher (``torchrun --standalone``: one machine, a free port), which then form the process group
    (`gradmap_agent.distributed`). Rank 0 prints the summary; the exit status is the first failed rank's."""
    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    if "WORLD_SIZE" in os.environ:
        raise ValueError("--nproc starts the processes itself: leave it out under torchrun")
    from gridedge_run.commands import check_data_parallel

    check_data_parallel(args.method, args.nproc)  # before any process starts
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    # the ranks print their own errors; the launcher's log lines would repeat them
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
    try:
        torchrun(
            ["--standalone", "--nproc-per-node", str(args.nproc), "-m", "gridedge_run.cli", *_without_nproc(args.argv)]
        )
    except ChildFailedError as exc:  # the ranks have printed their errors
        codes = [failure.exitcode for failure in exc.failures.values()]
        raise SystemExit(next((c for c in codes if c > 0), 1)) from None
    return None


def _without_nproc(argv: list[str]) -> list[str]:
    """``argv`` without its ``--nproc N`` (or ``--nproc=N``)."""
    out, skip = [], False
    for i, item in enumerate(argv):
        if skip:
            skip = False
        elif item == "--nproc":
            skip = i + 1 < len(argv)
        elif not item.startswith("--nproc="):
            out.append(item)
    return out


def _cmd_evaluate(args) -> dict:
    from gridedge_run.commands import run_evaluate

    return run_evaluate(args)


def _cmd_compare(args) -> dict:
    from pathlib import Path

    from gridedge_run.compare import run_compare, snippet_parts, write_snippet
    from gridedge_run.progress import show_progress
    from gridedge_run.stats import seed_list
    from gridedge_run.tune import chosen_settings

    seeds = seed_list(args.seeds) if args.seeds is not None else None
    for path in args.snippet or []:
        snippet_parts(Path(path), args.preset)  # a missing marker is an error now, not after the run
    result = run_compare(
        args.preset,
        Path(args.out),
        minutes=args.minutes,
        methods=args.methods,
        jobs=args.jobs,
        seeds=seeds,
        show=show_progress(args.quiet),
        quiet=args.quiet,
        device=args.device,
        tuned=chosen_settings(Path(args.tuned)) if args.tuned else None,
    )
    for path in args.snippet or []:
        write_snippet(result["snippet"], Path(path), args.preset)
    if not args.json:  # the table, then the scalar fields below it
        print((Path(args.out) / "results.md").read_text())
    return result


def _cmd_tune(args) -> dict:
    from pathlib import Path

    from gridedge_run.compare import TRAINED_METHODS, snippet_parts, write_snippet
    from gridedge_run.stats import seed_list
    from gridedge_run.tune import run_tune

    name = f"tune-{args.preset}"
    for path in args.snippet or []:
        snippet_parts(Path(path), name)  # a missing marker is an error now, not after the tuning
    result = run_tune(
        args.preset,
        Path(args.out),
        methods=args.methods or list(TRAINED_METHODS),
        configs=args.configs,
        seeds=seed_list(args.seeds),
        minutes=args.minutes,
        quiet=args.quiet,
        jobs=args.jobs,
    )
    for path in args.snippet or []:
        write_snippet((Path(args.out) / "tune_snippet.md").read_text(), Path(path), name)
    if not args.json:
        print((Path(args.out) / "tune.md").read_text())
    return result


def _cmd_profile(args) -> dict:
    from gridedge_env import make_sim
    from gridedge_run.commands import _sim_options, parse_assignments
    from gridedge_run.profile import profile_iteration

    sim_options = _sim_options(args.sim_set, args.feeder, args.agents, None)
    config = TRAIN_METHODS[args.method].make_config(**parse_assignments(args.set, "--set"))
    result = profile_iteration(make_sim(**sim_options), config, iterations=args.iterations)
    return {"method": args.method, **result}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``gridedge`` subcommand."""
    parser = argparse.ArgumentParser(prog="gridedge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_env_commands(sub)

    p = sub.add_parser("train", help="train independent per-agent policies (GradMAP, GradMA or a baseline)")
    p.add_argument(
        "method",
        choices=list(TRAIN_METHODS),
        help="gradma: GradMAP with K=1 and no trust region; ssl, ssl-penalty: baselines.ssl; ippo/mappo: baselines.ppo",
    )
    p.add_argument("--feeder", default=None, help="shipped feeder name (default ieee123)")
    p.add_argument("--agents", type=int, default=None, help="number of agents (default 1000)")
    p.add_argument("--sim-seed", type=int, default=None, help="seed of agent placement and parameters (default 0)")
    p.add_argument(
        "--device",
        default=None,
        help="torch device of the simulator, policies, multipliers and normaliser: cpu (default), cuda, cuda:1; "
        "with --resume it moves the run",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None, help="training-time budget in minutes")
    budget.add_argument("--iterations", type=int, default=None, help="number of rollouts (default: the config's)")
    p.add_argument("--seed", type=int, default=None, help="trainer seed (default 0)")
    p.add_argument("--out", required=True, help="run directory (must be new or empty unless --resume)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    start.add_argument(
        "--restart",
        action="store_true",
        help="start again a run in --out that stopped before its first checkpoint (replaces its files)",
    )
    p.add_argument("--eval-every", type=int, default=None, help="evaluate on validation days every N iterations")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field of the method's config")
    p.add_argument("--sim-set", action="append", metavar="KEY=VALUE", help="override a simulator (SimConfig) field")
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="train data-parallel in N processes on this machine (gradmap, gradma, ssl, ssl-penalty; "
        "torchrun --nproc-per-node N -m gridedge_run.cli train ... does the same, also over several nodes)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("evaluate", help="run trained policies or a rule decentralised on held-out days")
    p.add_argument("run_dir", nargs="?", default=None, help="run directory with exported policies (policies.pt)")
    p.add_argument(
        "--method",
        default=None,
        help="a reference instead of a run: noop, price-seeking, droop (rules) or oracle (optimum)",
    )
    p.add_argument("--feeder", default=None, help="(with --method) shipped feeder name (default ieee123)")
    p.add_argument("--agents", type=int, default=None, help="(with --method) number of agents (default 1000)")
    p.add_argument("--sim-seed", type=int, default=None, help="(with --method) simulator seed (default 0)")
    p.add_argument("--sim-set", action="append", metavar="KEY=VALUE", help="(with --method) SimConfig field")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="(with --method oracle) override an OracleConfig field, e.g. iterations=100",
    )
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument(
        "--households",
        default=None,
        choices=SPLITS,
        help="draw the households from this split's profiles instead of --split's (the same days with other "
        "households: tells the days' weather from the households' load)",
    )
    p.add_argument("--days", type=int, default=None, help="number of days, evenly spaced (default: all of the split)")
    p.add_argument("--batch", type=int, default=16, help="days simulated together (does not change the numbers)")
    p.add_argument("--seed", type=int, default=0, help="seed of the household draws of the evaluation days")
    p.add_argument("--device", default=None, help="torch device of the simulator and the policies (default cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(run=_cmd_evaluate)

    p = sub.add_parser("compare", help="train every method under one budget and compare them on the same test days")
    p.add_argument(
        "--preset",
        default="quick",
        choices=["quick", "smoke", "paper"],
        help="quick (default): the feasible IEEE-13 task, 1,000 agents, GradMAP, IPPO, rules and optimum, "
        "3 seeds, about 10 min on 2 cores; smoke: a check that everything runs (numbers mean "
        "nothing); paper: IEEE-123, 1,000 agents, every method, 15 min per method and seed",
    )
    p.add_argument(
        "--seeds",
        default=None,
        help="seeds, a range (0-4) or a list (0,1,2): every learner is trained once per seed (default: the preset's)",
    )
    p.add_argument(
        "--minutes", type=float, default=None, help="training budget per method and seed (default: the preset's)"
    )
    p.add_argument(
        "--methods", nargs="+", default=None, metavar="METHOD", help="a subset of the methods (default: the preset's)"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="train, then evaluate, this many methods and seeds at a time, each with an equal share of the CPU "
        "cores (default 1)",
    )
    p.add_argument(
        "--device", default="cpu", help="torch device of every training and evaluation (cpu, cuda; default cpu)"
    )
    p.add_argument("--out", required=True, help="comparison directory; rerun with the same --out to continue it")
    p.add_argument(
        "--snippet",
        action="append",
        metavar="FILE",
        help="write the results table between the <!-- results:PRESET:begin --> and <!-- results:PRESET:end --> "
        "lines of FILE (README.md, docs/results.md); repeatable; on a finished --out it only rewrites the tables",
    )
    p.add_argument(
        "--tuned", default=None, metavar="DIR", help="train every method with the settings gridedge tune chose in DIR"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(run=_cmd_compare)

    p = sub.add_parser("tune", help="the same tuning budget for every learner, scored on validation days")
    p.add_argument("--preset", default="paper", choices=["quick", "smoke", "paper"], help="the task (default paper)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD", help="learners (default: all trained)")
    p.add_argument("--configs", type=int, default=8, help="configurations per learner, the defaults first (default 8)")
    p.add_argument("--seeds", default="100", help="training seeds of every configuration (default 100)")
    p.add_argument("--minutes", type=float, default=5.0, help="training minutes per configuration and seed (default 5)")
    p.add_argument("--out", required=True, help="tuning directory; rerun with the same options to continue it")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="training runs at a time, each with cpu_count/jobs torch threads (default 1)",
    )
    p.add_argument(
        "--snippet",
        action="append",
        metavar="FILE",
        help="write the table between the <!-- results:tune-PRESET:begin --> and <!-- results:tune-PRESET:end --> "
        "lines of FILE (docs/gradmap.md); repeatable; on a finished --out it only rewrites the tables",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(run=_cmd_tune)

    p = sub.add_parser("profile", help="wall time of each phase of one GradMAP (or GradMA) iteration")
    p.add_argument("--method", default="gradmap", choices=["gradmap", "gradma"])
    p.add_argument("--feeder", default=None, help="shipped feeder name (default ieee123)")
    p.add_argument("--agents", type=int, default=None, help="number of agents (default 1000)")
    p.add_argument("--sim-set", action="append", metavar="KEY=VALUE", help="override a simulator (SimConfig) field")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field of the method's config")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations after one warm-up (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_cmd_profile)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gridedge`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parser.set_defaults(argv=argv)  # train --nproc hands the command line on to its processes
    return env_main(argv, parser=parser)


def _exit_rank(status: int) -> None:
    """End a process that torchrun started as one rank of several, skipping the interpreter's finalisation.

    With the gloo process group destroyed (`gradmap_agent.distributed`) a rank still aborted about once in
    ten runs while the interpreter shut down ("terminate called without an active exception", no Python frame
    left): the C++ runtime's threads outlive Python's teardown. Everything a rank writes is closed by the time
    `main` returns, so the rank flushes its streams and leaves with its status before that teardown starts.
    """
    import logging

    from gradmap_agent.distributed import leave_group

    leave_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a rank of a torchrun launch
        try:
            code = main()
        except SystemExit as stop:  # argparse's errors and a silent rank's user error
            code = stop.code if isinstance(stop.code, int) or stop.code is None else 1
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        _exit_rank(code or 0)
    sys.exit(main())
