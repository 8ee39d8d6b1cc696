"""Data parallelism of the gradient trainers (GradMAP, GradMA, SSL) over ``torch.distributed``.

Every rank holds the whole trainer (policies, optimiser, normaliser, multipliers, RNG) and draws the same
random numbers: the B scenarios of an iteration, the exploration noise and the minibatch order are drawn for
the whole batch on every rank. Rank ``r`` of ``R`` then rolls out rows ``[r B / R, (r + 1) B / R)``
(`rank_rows`), so that the union over the ranks is exactly the one-process batch. What depends on the batch
is summed over the ranks, one all-reduce each:

- the per-agent policy gradients (`all_sum_grads`, after the local backward and before the per-agent
  clipping and the Adam step), so that every rank takes the same step;
- the dual statistics (`sum_dual_statistics`: violations averaged over every rank's rows);
- the observation moments that the normaliser folds in (`fold_observations`);
- the rollout metrics (`sum_metrics`) and the scalars checked for divergence (`all_sum`), so that every
  rank reports the whole batch and raises together.

Without an initialised process group (one process) every function leaves the single-process computation
as it is. `init_from_env` starts the group in a process that ``torchrun`` (or ``gridedge train --nproc``)
launched: gloo for CPU tensors, NCCL for CUDA ones.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_rows",
    "all_sum",
    "all_sum_grads",
    "broadcast_object",
    "fold_observations",
    "init_from_env",
    "leave_group",
    "max_over_ranks",
    "rank_rows",
    "sum_dual_statistics",
    "sum_floats",
    "sum_metrics",
    "world",
]


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str) -> tuple[int, int]:
    """Join the process group of a ``torchrun`` launch (the WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and
    MASTER_PORT environment variables); a process started on its own stays alone. Backend: NCCL when
    ``device`` is a CUDA device (each rank on GPU LOCAL_RANK), gloo otherwise. Returns `world`."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        on_gpu = torch.device(device).type == "cuda"
        if on_gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if on_gpu else "gloo")
        # the group's communication threads must end before the interpreter does: a rank that exited with
        # them still running aborted now and then ("terminate called without an active exception")
        atexit.register(leave_group)
    return world()


def leave_group() -> None:
    """Destroy this process's process group, if it has one (a rank calls it before it exits)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    """Where the collectives run: NCCL reduces tensors on this rank's GPU, gloo on the CPU (the metrics
    accumulate on the CPU whatever the device, so a tensor may have to travel)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank_rows(batch: int) -> slice:
    """This rank's rows of a batch of ``batch`` rows (ValueError unless the ranks divide it evenly)."""
    rank, size = world()
    if batch % size:
        raise ValueError(f"batch_days={batch} must be a multiple of the number of processes ({size})")
    share = batch // size
    return slice(rank * share, (rank + 1) * share)


def all_sum(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType | None = None) -> torch.Tensor:
    """The sum (or ``op``, e.g. ``torch.distributed.ReduceOp.MAX``) of ``tensor`` over the ranks, as a new
    tensor; ``tensor`` itself with one process."""
    if world()[1] == 1:
        return tensor
    buf = tensor.detach().to(_comm_device(), copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM if op is None else op)
    return buf.to(tensor.device)


def all_sum_grads(params: Iterable[torch.Tensor]) -> None:
    """Sum the ``.grad`` of ``params`` over the ranks in place, in one all-reduce of one flat buffer (a
    parameter without a gradient counts as zero)."""
    if world()[1] == 1:
        return
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = all_sum(torch.cat([p.grad.reshape(-1) for p in params]))
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """The ranks' ``tensor`` (each this rank's rows, equal sizes) concatenated along dim 0 in rank order."""
    size = world()[1]
    if size == 1:
        return tensor
    buf = tensor.detach().to(_comm_device()).contiguous()
    parts = [torch.empty_like(buf) for _ in range(size)]
    dist.all_gather(parts, buf)
    return torch.cat(parts).to(tensor.device)


def sum_dual_statistics(
    device_violation: torch.Tensor, voltage_violation: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The violation arguments of `gradmap_agent.losses.dual_update` for the whole batch, in one all-reduce.

    Args:
        device_violation: [T, b, N] this rank's rows' device violations.
        voltage_violation: [T, b, n] this rank's rows' voltage violations (failed rows scored as the
            Lagrangian scores them).

    Returns:
        ``(device [T, 1, N], voltage [T, 1, n])``: the violations averaged over the rows of every rank, as one
        row (`dual_update` averages over rows).
    """
    if world()[1] == 1:
        return device_violation, voltage_violation
    dev = device_violation.to(torch.float64).sum(dim=1)
    volt = voltage_violation.to(torch.float64).sum(dim=1)
    rows = torch.tensor([float(device_violation.shape[1])], dtype=torch.float64, device=dev.device)
    flat = all_sum(torch.cat([dev.reshape(-1), volt.reshape(-1), rows]))
    n_dev, n_volt = dev.numel(), volt.numel()
    total_rows = flat[-1]
    return (
        (flat[:n_dev].view_as(dev) / total_rows)[:, None],
        (flat[n_dev : n_dev + n_volt].view_as(volt) / total_rows)[:, None],
    )


def fold_observations(normalizer, obs: torch.Tensor) -> None:
    """Fold observations [..., N, d] of every rank into ``normalizer`` (a `gradmap_agent.networks.ObsNormalizer`):
    count, mean and summed squared deviations from the mean over all ranks (two all-reduces: the sums, then
    the squared deviations from the global mean)."""
    if world()[1] == 1:
        normalizer.update(obs)
        return
    x = obs.detach().to(torch.float64).reshape(-1, *normalizer.mean.shape)
    n_all = all_sum(torch.tensor([float(x.shape[0])], dtype=torch.float64, device=x.device))
    mean = all_sum(x.sum(dim=0)) / n_all
    m2 = all_sum(((x - mean) ** 2).sum(dim=0))
    normalizer.merge(n_all[0], mean, m2)


#: How `sum_metrics` combines each attribute of a `gridedge_env.metrics.RolloutMetrics` over the ranks
#: (attributes left out are settings, the same on every rank).
_METRIC_REDUCTIONS = {
    "cost_sum": "sum",
    "terminal_cost_sum": "sum",
    "cost_by_agent": "sum",
    "device_by_agent": "sum",
    "terminal_by_agent": "sum",
    "outside": "sum",
    "over": "sum",
    "node_steps": "sum",
    "violation_sum": "sum",
    "failures": "sum",
    "worst": "max",
    "v_max": "max",
    "v_min": "min",
}
_METRIC_SETTINGS = {"v_min_pu", "v_max_pu", "n_agents", "agent_slices", "units"}


def sum_metrics(metrics) -> None:
    """Combine a `gridedge_env.metrics.RolloutMetrics` over the ranks in place (sums, worst excursion and
    voltage extremes), so that every rank reports the whole batch. Two all-reduces.

    Raises:
        RuntimeError: the accumulator has an attribute this function does not know how to combine (a new
            metric must be added to ``_METRIC_REDUCTIONS``).
    """
    if world()[1] == 1:
        return
    unknown = set(vars(metrics)) - set(_METRIC_REDUCTIONS) - _METRIC_SETTINGS
    if unknown:
        raise RuntimeError(f"sum_metrics does not know how to combine RolloutMetrics.{sorted(unknown)}")
    names = {kind: [k for k, v in _METRIC_REDUCTIONS.items() if v == kind] for kind in ("sum", "max", "min")}
    values = [torch.as_tensor(getattr(metrics, k), dtype=torch.float64).reshape(-1) for k in names["sum"]]
    flat = all_sum(torch.cat(values))
    offset = 0
    for name, value in zip(names["sum"], values, strict=True):
        part = flat[offset : offset + value.numel()]
        offset += value.numel()
        old = getattr(metrics, name)
        if isinstance(old, torch.Tensor):
            setattr(metrics, name, part.clone().view_as(old).to(old.dtype))
        else:
            setattr(metrics, name, round(float(part)) if isinstance(old, int) else float(part))
    # the minimum as the maximum of the negatives: one MAX all-reduce for all three extremes
    signed = [(k, 1.0) for k in names["max"]] + [(k, -1.0) for k in names["min"]]
    top = all_sum(
        torch.tensor([s * getattr(metrics, k) for k, s in signed], dtype=torch.float64), op=dist.ReduceOp.MAX
    ).tolist()
    for (name, sign), value in zip(signed, top, strict=True):
        setattr(metrics, name, sign * value)


def sum_floats(values: dict[str, float]) -> dict[str, float]:
    """Each value summed over the ranks (one all-reduce); ``values`` itself with one process."""
    if world()[1] == 1:
        return values
    flat = all_sum(torch.tensor(list(values.values()), dtype=torch.float64)).tolist()
    return dict(zip(values, flat, strict=True))


def max_over_ranks(value: float) -> float:
    """The largest ``value`` over the ranks (e.g. an iteration's wall time, so that every rank counts the
    same budget and stops at the same iteration); ``value`` itself with one process."""
    if world()[1] == 1:
        return value
    return float(all_sum(torch.tensor([value], dtype=torch.float64), op=dist.ReduceOp.MAX)[0])


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` itself with one process): e.g. the outcome of
    a check only rank 0 makes, so that every rank raises the same error or none does."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]
