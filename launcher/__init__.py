"""psframe-launch: start a psframe job (scheduler, servers, workers) locally, over ssh, under
Open MPI or inside a Slurm allocation, and supervise it until it ends.

Layers: ``cli`` -> ``config.LaunchConfig`` -> ``plan`` (pure placement and child env) ->
``backends`` (one per mechanism) -> ``supervisor`` (fail-fast watching, failure report).
"""
from .config import LaunchConfig  # noqa: F401
from .supervisor import launch  # noqa: F401

__all__ = ["LaunchConfig", "launch"]
