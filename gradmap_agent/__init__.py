"""GradMAP: gradient-based multi-agent proximal learning (and its no-reuse variant GradMA).

N independent per-agent policies (stacked weights, no parameter sharing, local observations only) trained
offline by primal-dual learning on the exact environment gradient of a Lagrangian, reused K times under a
trust region on the actions. ``docs/gradmap.md`` describes the algorithm.

- `train(env_or_config, GradMAPConfig(...), progress_fn=None, out_dir=None, resume=False)
  -> (make_policy, params, metrics)`; `gradma_config(...)` for the K = 1 variant;
- `make_policy(params)` -> decentralised ``policy(obs [B, N, d]) -> actions [B, N]``;
- `load_policies(run_dir_or_file)` -> ``(policy, info)`` from an exported ``policies.pt``;
- `evaluate_policy(sim, policy_fn, split="test")` -> the standard metrics of any method (the rule
  baselines are in `baselines.rules`).
"""

from gradmap_agent.evaluate import EVAL_KEYS, evaluate_policy, obs_policy, select_days
from gradmap_agent.networks import ObsNormalizer, StackedMLPPolicy, make_policy
from gradmap_agent.train import DivergenceError, GradMAPConfig, gradma_config, load_policies, train

__all__ = [
    "EVAL_KEYS",
    "DivergenceError",
    "GradMAPConfig",
    "ObsNormalizer",
    "StackedMLPPolicy",
    "evaluate_policy",
    "gradma_config",
    "load_policies",
    "make_policy",
    "obs_policy",
    "select_days",
    "train",
]
