"""Hard-scenario replay and parameter averaging: two training tricks every gradient-based learner may use
(GradMAP, GradMA, SSL and SSL-penalty compose them the same way; `gradmap_agent.config.ReplayConfig`).

- `HardScenarioPool`: with ``hard_scenario_share``, part of every rollout re-runs the hardest scenarios seen
  so far (a training day with its household draws: its reset seed) with the current policy. `start_rollout`
  draws a rollout's scenarios and noise with or without it; `HardScenarioPool.record` scores the rollout's
  rows and says which were fresh (the dual step uses only those: replayed rows are a sample chosen for its
  violations, an upward-biased estimate of the expectation the multipliers price).
- `PolicyAverage`: with ``policy_average`` beta, an exponential moving average of every agent's parameters,
  which evaluations, exports and the returned params use.
"""

from __future__ import annotations

import torch

from gradmap_agent.config import ReplayConfig
from gradmap_agent.distributed import all_gather_rows
from gridedge_env.episodes import reset_scenarios
from gridedge_env.scenarios import split_days

__all__ = ["HardScenarioPool", "PolicyAverage", "start_rollout"]


class HardScenarioPool:
    """The `ReplayConfig.hard_scenario_pool` highest-scoring scenarios rolled out so far: day, reset seed and
    last score (pu), highest score first."""

    def __init__(self, config: ReplayConfig):
        self.share, self.size = config.hard_scenario_share, config.hard_scenario_pool
        self.train_days = torch.as_tensor(split_days("train"), dtype=torch.int64)
        self.day = torch.zeros(0, dtype=torch.int64)
        self.seed = torch.zeros(0, dtype=torch.int64)
        self.score = torch.zeros(0, dtype=torch.float64)

    def draw(self, batch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Day and reset seed of each of the next rollout's rows: ``round(share * B)`` (at most the pool's
        size) drawn without replacement from the pool, the others fresh (uniform days, new random seeds), at
        least one. ``pooled`` [B] holds each row's pool index (-1 for a fresh row)."""
        # at least one fresh row, so that the dual step always has an unbiased sample
        n_hard = min(round(self.share * batch), len(self.day), batch - 1)
        n_fresh = batch - n_hard
        days = self.train_days[torch.randint(0, len(self.train_days), (n_fresh,), generator=gen)]
        seeds = torch.randint(0, 2**62, (n_fresh,), generator=gen)
        pooled = torch.randperm(len(self.day), generator=gen)[:n_hard]
        return {
            "day": torch.cat([days, self.day[pooled]]),
            "seed": torch.cat([seeds, self.seed[pooled]]),
            "pooled": torch.cat([torch.full((n_fresh,), -1, dtype=torch.int64), pooled]),
        }

    def update(self, scenarios: dict[str, torch.Tensor], worst: torch.Tensor) -> None:
        """Refresh the scores of the replayed scenarios, add the fresh ones, and keep the ``size`` highest
        (``worst`` [B]: every row's largest margin-tightened voltage violation, pu, float64 on the CPU)."""
        pooled = scenarios["pooled"]
        replayed = pooled >= 0
        score = self.score.clone()
        score[pooled[replayed]] = worst[replayed]
        fresh = ~replayed
        day = torch.cat([self.day, scenarios["day"][fresh].cpu()])
        seed = torch.cat([self.seed, scenarios["seed"][fresh].cpu()])
        score = torch.cat([score, worst[fresh]])
        keep = torch.sort(score, descending=True, stable=True).indices[: self.size]
        self.day, self.seed, self.score = day[keep], seed[keep], score[keep]

    def record(self, scenarios: dict | None, voltage_violation: torch.Tensor, rows: slice) -> torch.Tensor:
        """After a rollout of this rank's ``rows`` (``voltage_violation`` [T, b, n], pu, margin-tightened):
        update the pool (the ranks' rows gathered) and return which of this rank's rows were fresh [b]."""
        fresh = torch.ones(rows.stop - rows.start, dtype=torch.bool, device=voltage_violation.device)
        if scenarios is None:
            return fresh
        row_worst = voltage_violation.detach().amax(dim=(0, 2)).to(torch.float64)  # [b] pu
        self.update(scenarios, all_gather_rows(row_worst).cpu())
        return (scenarios["pooled"][rows] < 0).to(voltage_violation.device)

    def state_dict(self) -> dict:
        return {"day": self.day.clone(), "seed": self.seed.clone(), "score": self.score.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.day, self.seed, self.score = state["day"].clone(), state["seed"].clone(), state["score"].clone()


def start_rollout(sim, pool: HardScenarioPool, batch: int, rows: slice, gen: torch.Generator):
    """``(state, noise, scenarios)`` of a rollout of ``batch`` training days: the initial state of this rank's
    ``rows``, the whole batch's standard-normal exploration noise [T, B, N] (float64, CPU; every rank draws the
    same), and the scenarios drawn from ``pool`` (None when replay is off: then one reset of B fresh rows)."""
    shape = (sim.n_steps, batch, sim.n_agents)
    if pool.share > 0:
        scenarios = pool.draw(batch, gen)
        noise = torch.randn(shape, generator=gen, dtype=torch.float64)
        state = reset_scenarios(sim, "train", scenarios["day"][rows].tolist(), scenarios["seed"][rows].tolist())
        return state, noise, scenarios
    reset_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    noise = torch.randn(shape, generator=gen, dtype=torch.float64)
    # the whole batch's draws (one reset of B rows), then this rank's rows
    return sim.reset(batch, seed=reset_seed, split="train").select(rows), noise, None


class PolicyAverage:
    """Exponential moving average of a policy's parameters (`ReplayConfig.policy_average` beta; off at 0)."""

    def __init__(self, policy: torch.nn.Module, beta: float):
        self.beta = beta
        self.weights = current_weights(policy) if beta else None
        """The averaged parameters (None when off)."""

    def step(self, policy: torch.nn.Module) -> None:
        """``avg <- beta avg + (1 - beta) theta`` (no-op when off)."""
        if self.weights is None:
            return
        with torch.no_grad():
            for name, value in policy.state_dict().items():
                self.weights[name].mul_(self.beta).add_(value.detach(), alpha=1.0 - self.beta)

    def state_dict(self) -> dict | None:
        return None if self.weights is None else {k: v.clone() for k, v in self.weights.items()}

    def load_state_dict(self, state: dict | None) -> None:
        if self.weights is not None:
            self.weights = {k: v.clone() for k, v in state.items()}

    def exported(self, policy: torch.nn.Module) -> dict:
        """A copy of the weights to evaluate and export: the average when on, else the current parameters."""
        if self.weights is None:
            return current_weights(policy)
        return {k: v.clone() for k, v in self.weights.items()}


def current_weights(policy: torch.nn.Module) -> dict:
    """A copy of ``policy``'s current parameters (the last iterate)."""
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}
