"""Independent per-agent policies stored as stacked weights and evaluated with batched matrix products.

N agents, each with its own small MLP (no parameter sharing), are one set of tensors with a leading agent
dimension: `torch.bmm` evaluates all of them at once, so nothing loops over agents in Python. Each policy
is a Gaussian whose mean and log standard deviation come from the agent's own network; samples use the
reparameterisation trick and are squashed into [-1, 1] with tanh.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LOG_STD_RANGE = (-5.0, 1.0)


class StackedMLPPolicy(nn.Module):
    """N independent MLP policies: observation [B, N, d] -> action distribution over [-1, 1].

    Args:
        n_agents: number of agents N.
        obs_dim: observation size d (shorter observations are zero-padded by the caller).
        hidden: hidden width of every agent's network.
        layers: number of hidden layers.
        init_log_std: initial log standard deviation of the Gaussian before the tanh squash.
        generator: torch.Generator for the weight initialisation (reproducible per seed).
    """

    def __init__(self, n_agents: int, obs_dim: int, hidden: int = 32, layers: int = 2, init_log_std: float = -1.0,
                 generator: torch.Generator | None = None, dtype=torch.float32, device="cpu"):
        super().__init__()
        if n_agents < 1 or obs_dim < 1 or hidden < 1 or layers < 1:
            raise ValueError(f"need n_agents, obs_dim, hidden, layers >= 1, got {n_agents}, {obs_dim}, {hidden}, "
                             f"{layers}")
        sizes = [obs_dim] + [hidden] * layers + [2]  # last layer: mean and log std
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            bound = 1.0 / math.sqrt(fan_in)
            if k == len(sizes) - 2:
                bound *= 0.01  # start near the mean action 0 with the initial spread
            w = (torch.rand(n_agents, fan_in, fan_out, generator=generator, dtype=dtype) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w.to(device)))
            self.biases.append(nn.Parameter(torch.zeros(n_agents, 1, fan_out, dtype=dtype, device=device)))
        with torch.no_grad():
            self.biases[-1][..., 1] = init_log_std
        self.n_agents = n_agents
        self.obs_dim = obs_dim

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log std before squashing, each [B, N], for observations [B, N, d]."""
        if obs.dim() != 3 or obs.shape[1:] != (self.n_agents, self.obs_dim):
            raise ValueError(f"observations must have shape [B, {self.n_agents}, {self.obs_dim}], got "
                             f"{tuple(obs.shape)}")
        h = obs.transpose(0, 1)  # [N, B, d]: one matrix product per agent, batched
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if k < last:
                h = torch.tanh(h)
        out = h.transpose(0, 1)  # [B, N, 2]
        return out[..., 0], out[..., 1].clamp(*LOG_STD_RANGE)

    def act(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Actions in [-1, 1], [B, N]: tanh(mean + std * noise); `noise=None` gives the deterministic mean."""
        mean, log_std = self(obs)
        if noise is None:
            return torch.tanh(mean)
        return torch.tanh(mean + log_std.exp() * noise)
