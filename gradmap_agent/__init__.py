"""GradMAP: gradient-based multi-agent proximal learning (and its no-reuse variant GradMA).

N independent per-agent policies (stacked weights, no parameter sharing, local observations only) trained
offline by primal-dual learning on the exact environment gradient of a Lagrangian, reused K times under a
trust region on the actions. ``docs/gradmap.md`` describes the algorithm.

- `GradMAPConfig` (`gradmap_config(...)` checks the field names; `gradma_config(...)` for the K = 1
  variant) and `GradMAPTrainer`, one iteration of the algorithm; the run layer (`gridedge_run.train`)
  drives it with a budget, checkpoints and run directories;
- `make_policy(params)` -> decentralised ``policy(obs [B, N, d]) -> actions [B, N]``;
- `StackedMLPPolicy`, `ObsNormalizer`: the per-agent networks and observation statistics that the
  baselines compose too.
"""

from gradmap_agent.networks import ObsNormalizer, StackedMLPPolicy, make_policy
from gradmap_agent.train import DivergenceError, GradMAPConfig, GradMAPTrainer, gradma_config, gradmap_config

__all__ = [
    "DivergenceError",
    "GradMAPConfig",
    "GradMAPTrainer",
    "ObsNormalizer",
    "StackedMLPPolicy",
    "gradma_config",
    "gradmap_config",
    "make_policy",
]
