"""Which process this is, in a multi-process run (Lightning's DDP launcher, ``torchrun``, SLURM).

Every process of a multi-process run executes the whole job (data, model, training, scoring), so
that collective calls line up; only the main process writes the run's files, prints its report and
finishes its loggers. These helpers read the launcher's environment, so they answer before
``torch.distributed`` is initialised (when the run directory is opened), and ``rank_world`` answers
from the process group once there is one.
"""

from __future__ import annotations

import os

import torch.distributed as dist


def is_main_process() -> bool:
    """True in a single-process run and in the process of global rank 0 of a multi-process one.

    Reads ``RANK`` (torchrun), else ``SLURM_PROCID`` when SLURM runs several tasks, else
    ``NODE_RANK`` and ``LOCAL_RANK`` (Lightning's own launcher sets these in the processes it starts).
    """
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) == 0
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]) == 0
    return int(env.get("NODE_RANK", "0")) == 0 and int(env.get("LOCAL_RANK", "0")) == 0


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every process of the default process group (nothing without one)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
