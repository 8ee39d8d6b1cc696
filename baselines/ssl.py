"""Self-supervised learning through the simulator (``ssl``, ``ssl-penalty``): backpropagation through time
of the rollout objective, through the per-agent policies and the differentiable core.

The policies, Lagrangian, rollout, checkpoints and metrics are GradMAP's (`gradmap_agent.train`), and
`gridedge_run.loop.train` drives `SSLTrainer` as it drives GradMAP's; only three things differ:

1. **The graph runs through the policies.** At every step the policy's action (reparameterised, with
   the stored noise) enters ``sim.step`` with its graph, and the observation the policy reads comes from the
   simulator with its graph (not detached, unlike GradMAP's environment gradient). One ``backward()`` of the
   rollout's Lagrangian therefore gives ``dL/dtheta`` including how each action changes later observations
   and through them later actions: BPTT over T steps through devices, power flow and policies.
2. **One policy update per rollout**: per-agent gradient clipping and one Adam step on that gradient; no
   stored-rollout reuse, no trust region.
3. **Constraint weights.** ``ssl``: GradMAP's primal-dual ascent on the same multipliers
   (`gradmap_agent.losses.dual_update`). ``ssl-penalty``: fixed penalty weights (`SSLConfig.device_penalty`,
   `SSLConfig.voltage_penalty`), no dual ascent.

``docs/baselines.md`` has the equations and results.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradmap_agent.train import GradMAPConfig, GradMAPTrainer, check_fields

__all__ = ["SSLConfig", "SSLTrainer", "ssl_config", "ssl_penalty_config"]


@dataclass(frozen=True)
class SSLConfig(GradMAPConfig):
    """GradMAP's configuration with one update per rollout and no trust region, plus the penalty variant.

    The budget, rollout, policy, optimiser, multiplier, normalisation and checkpoint fields mean what they
    mean in `GradMAPConfig`; ``reuse``, ``minibatches``, ``clip_radius`` and ``prox_eta`` are fixed to
    1, 1, None, None.
    """

    reuse: int = 1
    minibatches: int = 1
    clip_radius: float | None = None
    prox_eta: float | None = None
    bptt_window: int | None = 4
    """Truncated BPTT: the observations' graph is cut every this many steps (4: two hours), so a gradient
    passes through at most this many policies in a row (the devices' and network's own dynamics stay
    differentiated over the whole day). None: full BPTT over the day, whose gradient explodes on IEEE-123 with
    1,000 agents (per-agent norms from 1e2 to 1e10 within 150 iterations; docs/baselines.md)."""
    fixed_penalties: bool = False
    """True: ``ssl-penalty`` (the multipliers stay at the two penalties below; no dual ascent)."""
    # GradMAP's dual ascent starts from these weights (its initial multipliers), so they are defined once.
    device_penalty: float = GradMAPConfig.device_multiplier_init
    """(ssl-penalty) $ per unit of device violation (kW or K) per agent-step (10)."""
    voltage_penalty: float = GradMAPConfig.voltage_multiplier_init
    """(ssl-penalty) $ per pu of voltage violation per node-step (outside the margin-tightened band; 1e4)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = []
        if not (self.reuse == 1 and self.minibatches == 1 and self.clip_radius is None and self.prox_eta is None):
            problems.append("self-supervised learning takes one update per rollout without trust region: reuse=1, "
                            f"minibatches=1, clip_radius=None, prox_eta=None; got {self.reuse}, {self.minibatches}, "
                            f"{self.clip_radius}, {self.prox_eta}")
        if self.bptt_window is not None and not (isinstance(self.bptt_window, int) and self.bptt_window >= 1):
            problems.append(f"bptt_window must be a positive integer or None, got {self.bptt_window!r}")
        for name in ("device_penalty", "voltage_penalty"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if problems:
            raise ValueError("invalid SSLConfig: " + "; ".join(problems))

    @property
    def method(self) -> str:
        """The method's name in run directories: "ssl-penalty" with fixed penalties, else "ssl"."""
        return "ssl-penalty" if self.fixed_penalties else "ssl"


def ssl_config(**fields) -> SSLConfig:
    """``ssl``: primal-dual self-supervised learning. Raises ValueError naming unknown or invalid fields."""
    return SSLConfig(**check_fields(SSLConfig, fields))


def ssl_penalty_config(**fields) -> SSLConfig:
    """``ssl-penalty``: self-supervised learning with fixed penalty weights."""
    return ssl_config(**{"fixed_penalties": True, **fields})


class SSLTrainer(GradMAPTrainer):
    """GradMAP's trainer with the graph through the policies and one update per rollout (module docstring)."""

    def __init__(self, sim, config: SSLConfig):
        if not isinstance(config, SSLConfig):
            raise ValueError(f"SSLTrainer needs an SSLConfig, got {type(config).__name__}")
        super().__init__(sim, config)
        if config.fixed_penalties:
            self.multipliers.device_raw.fill_(config.device_penalty)
            self.multipliers.voltage.fill_(config.voltage_penalty)

    def act(self, obs: torch.Tensor, noise: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The action with its graph through the policy and the observation; the observation is detached at
        the start of every `SSLConfig.bptt_window` steps (truncated BPTT)."""
        window = self.config.bptt_window
        if window is not None and t % window == 0:
            obs = obs.detach()
        x = self.normalizer.normalize(obs).to(self.pdtype)
        a = self.policy.act(x, noise)
        return x, a, a.to(self.sim.dtype)

    def action_gradient(self, leaves: list[torch.Tensor]) -> None:
        """Nothing to collect: the backward has put ``dL/dtheta`` into the policy's ``.grad``."""
        return None

    def update_policy(self, roll: dict, lr: float) -> dict:
        """One clipped Adam step on the BPTT gradient of the rollout's Lagrangian."""
        self.set_lr(lr)
        norms = self.clipped_step()
        self.optimizer.zero_grad(set_to_none=True)  # the next rollout's backward accumulates from zero
        return self.update_stats(norms, roll["x"][0])

    def dual_step(self, roll: dict) -> None:
        if not self.config.fixed_penalties:
            super().dual_step(roll)
