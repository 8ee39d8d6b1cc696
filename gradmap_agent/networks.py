"""Independent per-agent policies stored as stacked weights, and a per-agent observation normaliser.

N agents, each with its own small MLP (no parameter sharing), are one set of tensors with a leading agent
dimension: `torch.baddbmm` evaluates all of them at once, so nothing loops over agents in Python. Each
policy is a Gaussian whose mean and log standard deviation come from the agent's own network; samples use
the reparameterisation trick and are squashed into the device's action bounds around its own rule action (`squash`).
Agent ``i``'s action depends only on agent ``i``'s observation row and on slice ``i`` of every parameter
tensor.

`ObsNormalizer` keeps a running mean and variance per agent and feature ([N, d], float64, Chan et al.'s
parallel update); the trainer freezes it during each round of policy updates and folds in the rollout's
observations afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from gridedge_env.core import OBS_DIM, OBS_NAMES

__all__ = [
    "LOG_STD_RANGE",
    "ObsNormalizer",
    "StackedMLPPolicy",
    "clone_tree",
    "hidden_tanh",
    "make_policy",
    "policy_input",
    "rule_and_bounds",
    "squash",
]

_RULE_AND_BOUNDS = [OBS_NAMES.index(name) for name in ("rule_action", "action_low", "action_high")]

#: Bounds of the Gaussian's log standard deviation (before the tanh squash).
LOG_STD_RANGE = (-5.0, 1.0)


class _HiddenTanh(torch.autograd.Function):
    """``tanh(x)`` computed as ``2 sigmoid(2x) - 1``, with tanh's own backward ``g (1 - y^2)``.

    Why: torch's CPU tanh kernel is slow. On the 2-core machine (torch 2.13, float32,
    [1000, 192, 16]) it took 11-16 ms against 2.5 ms for sigmoid. The hidden activations then were half
    of every GradMAP policy update. The identity is exact; in float32 the two forms differ by at most
    2e-7 (absolute). Only the hidden layers use it: the action squash keeps `torch.tanh`, whose relative
    precision near 0 matters for small actions.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(2.0 * x).mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad_y, y)


def squash(u: torch.Tensor, rule_and_bounds: torch.Tensor) -> torch.Tensor:
    """The action of a pre-squash value ``u`` [...]: a residual around the device's own rule action, inside the
    actions it can take. ``rule_and_bounds`` [..., 3] holds the rule action ``r`` and the bounds ``low <=
    high`` (the raw observation's ``rule_action``, ``action_low``, ``action_high``: `rule_and_bounds`); with
    ``r`` clipped into the bounds the action is ``r + tanh(u) (high - r)`` for ``u >= 0`` and ``r + tanh(u) (r -
    low)`` below.

    Why: ``u = 0`` is the device's built-in controller (batteries idle, generators at their minimum, heat pumps
    on their thermostat), so every policy starts from a controller that keeps its comfort band, and learns what
    to change. The bounds (`gridedge_env.core.action_bounds`) keep every action one the device can carry out
    without a device violation, now or at the day's end, whatever the weights. Each side is tanh scaled to the
    room left, so the slope at ``u = 0`` is the room on that side, where ``tanh(u + atanh(r))`` would vanish at
    a rule on a bound (a generator at its minimum).
    """
    low, high = rule_and_bounds[..., 1], rule_and_bounds[..., 2]
    rule = torch.minimum(torch.maximum(rule_and_bounds[..., 0], low), high)
    t = torch.tanh(u)
    return rule + t * torch.where(t >= 0, high - rule, rule - low)


def hidden_tanh(x: torch.Tensor) -> torch.Tensor:
    """The hidden layers' tanh activation (`_HiddenTanh`: the same function, computed faster on CPU)."""
    return _HiddenTanh.apply(x)


class StackedMLPPolicy(nn.Module):
    """N independent MLP policies: observation [B, N, d] -> action distribution over [-1, 1].

    Every parameter tensor has the agent axis first (weights ``[N, fan_in, fan_out]``, biases
    ``[N, 1, fan_out]``), so ``p[i]`` for every parameter ``p`` is agent ``i``'s whole network.

    Args:
        n_agents: Number of agents N.
        obs_dim: Observation size d.
        hidden: Hidden width of every agent's network.
        layers: Number of hidden layers (tanh activations).
        init_log_std: Initial log standard deviation of the Gaussian before the tanh squash.
        generator: torch.Generator for the weight initialisation (reproducible per seed).
        dtype: Parameter dtype.
        device: Parameter device.
    """

    def __init__(
        self,
        n_agents: int,
        obs_dim: int,
        hidden: int = 32,
        layers: int = 2,
        init_log_std: float = -1.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        if n_agents < 1 or obs_dim < 1 or hidden < 1 or layers < 1:
            raise ValueError(
                f"need n_agents, obs_dim, hidden, layers >= 1, got {n_agents}, {obs_dim}, {hidden}, {layers}"
            )
        sizes = [obs_dim] + [hidden] * layers + [2]  # last layer: mean and log std
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            bound = 1.0 / math.sqrt(fan_in)
            if k == len(sizes) - 2:
                bound *= 0.01  # start near the mean action 0 with the initial spread
            w = (torch.rand(n_agents, fan_in, fan_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w.to(dtype=dtype, device=device)))
            self.biases.append(nn.Parameter(torch.zeros(n_agents, 1, fan_out, dtype=dtype, device=device)))
        with torch.no_grad():
            self.biases[-1][..., 1] = init_log_std
        self.n_agents = n_agents
        self.obs_dim = obs_dim
        self.hidden = hidden
        self.layers = layers

    @classmethod
    def from_config(
        cls,
        n_agents: int,
        obs_dim: int,
        config,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
    ) -> StackedMLPPolicy:
        """The policies of a `gradmap_agent.config.PolicyConfig` (width, depth, initial log std, dtype)."""
        return cls(
            n_agents,
            obs_dim,
            hidden=config.hidden,
            layers=config.layers,
            init_log_std=config.init_log_std,
            generator=generator,
            dtype=config.dtype,
            device=device,
        )

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log std before squashing, each [B, N], for (normalised) observations [B, N, d]."""
        if obs.dim() != 3 or obs.shape[1:] != (self.n_agents, self.obs_dim):
            raise ValueError(
                f"observations must have shape [B, {self.n_agents}, {self.obs_dim}], got {tuple(obs.shape)}"
            )
        h = obs.to(self.weights[0].dtype).transpose(0, 1)  # [N, B, d]: one matrix product per agent, batched
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if k < last:
                h = hidden_tanh(h)
        out = h.transpose(0, 1)  # [B, N, 2]
        return out[..., 0], out[..., 1].clamp(*LOG_STD_RANGE)

    def act(self, obs: torch.Tensor, rule_bounds: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Actions in [-1, 1], [B, N]: ``squash(mean + std * noise, rule_bounds)`` for normalised observations
        ``obs`` and the rule actions and action bounds ``rule_bounds`` [B, N, 3] of the raw observations
        (`rule_and_bounds`); ``noise=None`` gives ``squash(mean, rule_bounds)``."""
        mean, log_std = self(obs)
        if noise is not None:
            mean = mean + log_std.exp() * noise.to(mean.dtype)
        return squash(mean, rule_bounds.to(mean.dtype))

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> StackedMLPPolicy:
        """Rebuild a policy (shapes read from the tensors) and load ``state`` into it."""
        n_layers = sum(1 for k in state if k.startswith("weights."))
        w0 = state["weights.0"]
        policy = cls(
            int(w0.shape[0]),
            int(w0.shape[1]),
            hidden=int(w0.shape[2]),
            layers=n_layers - 1,
            dtype=w0.dtype,
            device=w0.device,
        )
        policy.load_state_dict(state)
        return policy


class ObsNormalizer:
    """Running mean and standard deviation per agent and feature; ``(obs - mean) / std``, clipped.

    Args:
        n_agents: Number of agents N.
        obs_dim: Observation size d.
        std_min: Lower bound of the standard deviation used to normalise (features are O(1) already; a
            feature that has been constant so far is not blown up when it starts to move).
        clip: Normalised observations are clipped to ``[-clip, clip]``.
        enabled: False makes `normalize` the identity (statistics are still kept).
    """

    def __init__(
        self,
        n_agents: int,
        obs_dim: int,
        std_min: float = 0.05,
        clip: float = 5.0,
        enabled: bool = True,
        device: str | torch.device = "cpu",
    ):
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.mean = torch.zeros(n_agents, obs_dim, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(n_agents, obs_dim, dtype=torch.float64, device=device)
        self.std_min = float(std_min)
        self.clip = float(clip)
        self.enabled = bool(enabled)

    @classmethod
    def from_config(cls, n_agents: int, obs_dim: int, config, device: str | torch.device = "cpu") -> ObsNormalizer:
        """A normaliser with the settings of a `gradmap_agent.config.NormalizerConfig`."""
        return cls(
            n_agents,
            obs_dim,
            std_min=config.obs_std_min,
            clip=config.obs_clip,
            enabled=config.normalize_obs,
            device=device,
        )

    @property
    def std(self) -> torch.Tensor:
        """[N, d] standard deviation used to normalise (1 before any data)."""
        # on the statistics' device (no host round trip per step)
        std = (self.m2 / self.count.clamp_min(1.0)).sqrt().clamp_min(self.std_min)
        return torch.where(self.count < 2, torch.ones_like(std), std)

    def update(self, obs: torch.Tensor) -> None:
        """Fold observations [..., N, d] (every leading index one sample) into the statistics."""
        x = obs.detach().to(torch.float64).reshape(-1, *self.mean.shape)
        if x.shape[0] == 0:
            return
        mean_b = x.mean(dim=0)
        self.merge(float(x.shape[0]), mean_b, ((x - mean_b) ** 2).sum(dim=0))

    def merge(self, n_b: float | torch.Tensor, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        """Fold in a sample's count (> 0), mean [N, d] and squared deviations from that mean summed over the
        sample [N, d] (Chan et al.'s parallel update; data parallelism passes the moments of every rank's
        observations, `gradmap_agent.distributed.fold_observations`)."""
        n_a = self.count
        total = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / total)
        self.m2 = self.m2 + m2_b + delta**2 * (n_a * n_b / total)
        self.count = total

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        """Normalised observations, same shape and dtype as ``obs`` [..., N, d]."""
        if not self.enabled:
            return obs
        mean = self.mean.to(obs.dtype)
        std = self.std.to(obs.dtype)
        return ((obs - mean) / std).clamp(-self.clip, self.clip)

    def state_dict(self) -> dict:
        """Tensors and settings (for checkpoints and exported policies)."""
        return {
            "count": self.count.clone(),
            "mean": self.mean.clone(),
            "m2": self.m2.clone(),
            "std_min": self.std_min,
            "clip": self.clip,
            "enabled": self.enabled,
        }

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"].clone().to(self.mean.device)
        self.mean = state["mean"].clone().to(self.mean.device)
        self.m2 = state["m2"].clone().to(self.mean.device)
        self.std_min, self.clip, self.enabled = float(state["std_min"]), float(state["clip"]), bool(state["enabled"])

    @classmethod
    def from_state_dict(cls, state: dict) -> ObsNormalizer:
        n, d = state["mean"].shape
        norm = cls(int(n), int(d), device=state["mean"].device)
        norm.load_state_dict(state)
        return norm


def make_policy(params: dict, deterministic: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """A decentralised policy from trained ``params`` (``{"policy": state_dict, "normalizer": state}``).

    Args:
        params: As returned by `gridedge_run.train` or loaded by `gridedge_run.load_policies`.
        deterministic: True: the squashed mean ``tanh(mean)`` (evaluation). False: a fresh Gaussian sample
            per call (``torch.randn``, the global RNG).

    Returns:
        ``policy(obs [B, N, d]) -> actions [B, N]`` in [-1, 1], in ``obs``'s dtype, without gradient. Agent
        ``i``'s action depends only on ``obs[:, i]``.
    """
    net = StackedMLPPolicy.from_state_dict(params["policy"])
    if net.obs_dim != OBS_DIM:
        raise ValueError(
            f"the policies read {net.obs_dim} observation features, this task has {OBS_DIM} ({', '.join(OBS_NAMES)})"
        )
    norm = ObsNormalizer.from_state_dict(params["normalizer"])
    net.requires_grad_(False)

    def policy(obs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = norm.normalize(obs.to(torch.float64)).to(net.weights[0].dtype)
            noise = None if deterministic else torch.randn(obs.shape[:2], dtype=x.dtype, device=x.device)
            return net.act(x, rule_and_bounds(obs), noise).to(obs.dtype)

    policy.n_agents = net.n_agents  # type: ignore[attr-defined]
    policy.obs_dim = net.obs_dim  # type: ignore[attr-defined]
    return policy


def rule_and_bounds(obs: torch.Tensor) -> torch.Tensor:
    """[..., N, 3] the rule action and the action bounds of raw observations [..., N, d] (their ``rule_action``,
    ``action_low`` and ``action_high`` features): what `squash` maps onto."""
    return obs[..., _RULE_AND_BOUNDS]


def clone_tree(obj):
    """A detached copy of ``obj`` (tensors cloned inside dicts, lists and tuples; other values as they are):
    policy weights and optimiser states in checkpoints."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clone_tree(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(clone_tree(v) for v in obj)
    return obj


def policy_input(obs: torch.Tensor, t: int, bptt_window: int | None) -> torch.Tensor:
    """The observation of step ``t`` as a policy reads it during a differentiated rollout: with its graph (so a
    gradient reaches earlier actions through this step's policy), cut at the start of every ``bptt_window``
    steps (truncated backpropagation through time: a gradient passes through at most that many policies in a
    row; 1 cuts every step, None never). GradMAP's environment gradient and SSL's BPTT share this rule."""
    if bptt_window is not None and t % bptt_window == 0:
        return obs.detach()
    return obs
