"""Where a run trains: the one dispatcher over the launchers.

- ``local``: Ray on this machine, or the cluster at ``RAY_ADDRESS`` joined as a driver (``local``);
- ``ray``: a job on an existing Ray cluster through the Ray Jobs API (``ray_jobs``);
- ``kuberay``: a RayJob in this Kubernetes namespace (``kuberay``).

Each checks everything it can before it starts anything, and returns a ``TrainResult`` with the
artifact in ``config.output``.
"""

from __future__ import annotations

from dreamloom.config import RunConfig
from dreamloom.errors import DreamloomError
from dreamloom.training.job import TrainResult

LAUNCHERS = ("local", "ray", "kuberay")


def launch(
    config: RunConfig, launcher: str = "local", resume: bool = False, ray_address: str | None = None
) -> TrainResult:
    """Train where ``launcher`` says (``ray_address``: the ray launcher's cluster, default RAY_ADDRESS)."""
    if launcher == "local":
        from dreamloom.training.local import train

        return train(config, resume)
    if launcher == "ray":
        from dreamloom.training.ray_jobs import train_on_ray

        return train_on_ray(config, resume, address=ray_address)
    if launcher == "kuberay":
        from dreamloom.training.kuberay import train_on_kuberay

        return train_on_kuberay(config, resume)
    raise DreamloomError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
