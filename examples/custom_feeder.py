"""Your own OpenDSS feeder as a gridedge task: import, check against OpenDSS, save, simulate one day.

    python examples/custom_feeder.py --dss path/to/Master.dss --agents 30
    python examples/custom_feeder.py        # demo: the shipped IEEE-13 feeder written as OpenDSS, then imported

Needs only the core install (``pip install -e .``); docs/tutorial-custom-feeder.md explains each step.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from baselines.rules import RULES
from gridedge_env import make_sim
from gridedge_env.network import Feeder, from_opendss, load_feeder
from gridedge_env.validation import validate
from gridedge_run import evaluate_policy


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dss", default=None, help="OpenDSS model (default: IEEE-13 exported by gridedge)")
    parser.add_argument("--agents", type=int, default=30, help="number of agents placed on the feeder")
    parser.add_argument("--samples", type=int, default=20, help="operating points compared with OpenDSS")
    parser.add_argument("--out", default="custom_feeder.json", help="where to save the feeder in gridedge's format")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        dss = args.dss
        if dss is None:  # a self-contained demo: any feeder, edited or not, can be written as OpenDSS
            dss = str(Path(tmp) / "ieee13.dss")
            load_feeder("ieee13").to_opendss(dss)
        feeder = from_opendss(dss)  # OpenDSS compiles the model; gridedge reads every element back
        check = validate(feeder, reference=dss, samples=args.samples)
    if not (check["all_converged"] and check["max_abs_err_pu"] < 1e-6):
        raise SystemExit(f"gridedge and OpenDSS disagree on {dss}: {check}")

    feeder.save(args.out)  # loads again without OpenDSS: Feeder.load(path), or feeder=path in make_sim
    sim = make_sim(feeder=Feeder.load(args.out), n_agents=args.agents)
    day = evaluate_policy(sim, RULES["price-seeking"], split="test", days=1)
    summary = {
        "feeder": str(args.dss or "ieee13 (exported)"),
        "agents": sim.n_agents,
        "nodes": sim.n_nodes,
        "max_abs_err_pu": check["max_abs_err_pu"],
        "saved": args.out,
        "price-seeking cost": day["cost"],
        "price-seeking violation_share": day["violation_share"],
        "seconds": time.perf_counter() - start,
    }
    for key, value in summary.items():
        print(f"{key:>30}: {value:.6g}" if isinstance(value, float) else f"{key:>30}: {value}")
    return summary


if __name__ == "__main__":
    main()
