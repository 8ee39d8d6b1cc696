"""The run layer: how methods are trained, evaluated and compared, above the simulator and the trainers.

Imports go one way: `gridedge_env` (the simulator, knows no trainer) <- `gradmap_agent`, `baselines`
(the algorithms) <- `gridedge_run` (this package). docs/architecture.md has the picture.

- `train(env_or_config, config, progress_fn=None, *, out_dir=None, resume=False)
  -> (make_policy, params, metrics)`: any method's budget, checkpoint and resume loop (`gridedge_run.loop`);
- `evaluate_policy(sim, policy_fn, split="test")`: the standard metrics of any method on held-out days;
  `obs_policy(fn)` adapts a decentralised ``fn(obs) -> actions``;
- `load_policies(run_dir)` -> ``(policy, info)`` from an exported ``policies.pt`` (`gridedge_run.rundir`);
- `TRAIN_METHODS`, `REFERENCE_POLICIES`: the method registry (`gridedge_run.methods`);
- `run_compare(preset, out)`: ``gridedge compare`` (`gridedge_run.compare`);
- `gridedge_run.cli`: the ``gridedge`` command.
"""

from gridedge_run.evaluate import EVAL_KEYS, evaluate_policy, obs_policy
from gridedge_run.loop import train
from gridedge_run.methods import REFERENCE_POLICIES, TRAIN_METHODS
from gridedge_run.rundir import load_policies

__all__ = [
    "EVAL_KEYS",
    "REFERENCE_POLICIES",
    "TRAIN_METHODS",
    "evaluate_policy",
    "load_policies",
    "obs_policy",
    "train",
]
