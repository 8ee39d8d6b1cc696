"""`gridedge profile`: the phases of one GradMAP iteration add up to the iteration and the backward is timed
(IEEE-13, 20 agents)."""

from __future__ import annotations

import torch

from gradmap_agent import gradma_config, gradmap_config
from gridedge_env import make_sim
from gridedge_run.profile import PHASES, profile_iteration


def test_profile_phases_of_one_iteration():
    sim = make_sim(feeder="ieee13", n_agents=20)
    backward = torch.Tensor.backward
    result = profile_iteration(sim, gradmap_config(batch_days=2, hidden=8, reuse=4), iterations=1)
    assert torch.Tensor.backward is backward  # the timing wrapper is removed afterwards
    assert all(result[k] >= 0 for k in PHASES)
    assert result["backward_s"] > 0 and result["rollout_forward_s"] > 0 and result["policy_updates_s"] > 0
    assert abs(sum(result[k] for k in PHASES) - result["iteration_s"]) < 1e-9
    assert abs(sum(result["share"].values()) - 1.0) < 1e-9
    assert profile_iteration(sim, gradma_config(batch_days=2, hidden=8), iterations=1)["reuse"] == 1
