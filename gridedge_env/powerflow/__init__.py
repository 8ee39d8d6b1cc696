"""Batched, differentiable three-phase power flow: `compile` a feeder once, then `solve` batches."""

from gridedge_env.powerflow.compile import CompiledFeeder, compile
from gridedge_env.powerflow.solve import PowerFlowError, PowerFlowResult, solve

__all__ = ["CompiledFeeder", "PowerFlowError", "PowerFlowResult", "compile", "solve"]
