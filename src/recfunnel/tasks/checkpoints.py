"""Checkpoints: loading one safely and checking that it fits a model. Every load in the project goes
through here (training resume, the retriever and ranker of a finished run, serving)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from recfunnel.utils.errors import RecfunnelError


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, loaded with ``weights_only=True`` on the CPU. A folder is a sharded
    checkpoint (``trainer=sharded``): see ``load_sharded_checkpoint``.

    Raises one ``RecfunnelError`` naming the file when it is missing, truncated or not a checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        return load_sharded_checkpoint(path)
    if not path.is_file():
        raise RecfunnelError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecfunnelError(f"checkpoint {path} is damaged or not a checkpoint ({first[:160]}); delete it to start "
                             "over, or restore it from a copy") from None
    if not isinstance(checkpoint, dict):
        raise RecfunnelError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a Lightning checkpoint")
    return checkpoint


def check_compatible(module: torch.nn.Module, checkpoint: dict[str, Any]) -> None:
    """Raise one clear error when a checkpoint's weights do not fit ``module`` (another model,
    feature schema or size), naming the first mismatches; instead of torch's wall of text."""
    state = checkpoint.get("state_dict")
    if state is None:
        raise RecfunnelError("the checkpoint holds no model weights (no 'state_dict'); is it a Lightning checkpoint "
                             "written by recfunnel.train?")
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or reshaped:
        parts = [f"{len(reshaped)} with other shapes ({'; '.join(reshaped[:3])})" if reshaped else "",
                 f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})" if unexpected else ""]
        raise RecfunnelError("the checkpoint was written by another model or config: its weights differ from this "
                             f"model's: {', '.join(p for p in parts if p)}. Use the same model/features config as the "
                             "run that wrote it (its config.yaml), or a fresh run directory.")


SHARDED_META = "meta.pt"  # rank 0's part of a sharded checkpoint (``recfunnel.tasks.sharding``)


def checkpoint_step(path: str | Path) -> int:
    """The global step a checkpoint was saved at; of a sharded folder, read from its ``meta.pt``
    alone (not the shards)."""
    path = Path(path)
    if path.is_dir():
        return int(sharded_meta(path).get("global_step", 0))
    return int(load_checkpoint(path).get("global_step", 0))


def sharded_meta(path: Path) -> dict[str, Any]:
    """The ``meta.pt`` of a sharded checkpoint folder (step, loops, world size, plan, ...), with one
    clear error for a folder that lacks it or holds a damaged one."""
    if not (path / SHARDED_META).is_file():
        raise RecfunnelError(f"checkpoint {path} is a folder without {SHARDED_META}: not a sharded checkpoint written "
                             "by trainer=sharded (or one whose save did not finish)")
    try:
        return torch.load(path / SHARDED_META, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile):
        raise RecfunnelError(f"sharded checkpoint {path} is damaged ({SHARDED_META} unreadable); delete it to "
                             "start over") from None


def load_sharded_checkpoint(path: Path) -> dict[str, Any]:
    """A sharded checkpoint folder (``torch.distributed.checkpoint`` shards + ``meta.pt``) read in this
    one process into an ordinary checkpoint: ``state_dict`` holds whole tensors, whatever the number
    of ranks that wrote it, so every loader of a finished run reads sharded runs too. The fused
    optimizer's state is left out (only resuming the sharded run needs it)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    meta = sharded_meta(path)
    try:
        state: dict[str, Any] = {}
        _load_state_dict(state, storage_reader=FileSystemReader(str(path)),
                         planner=_EmptyStateDictLoadPlanner(keys={"state_dict"}), no_dist=True)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecfunnelError(f"sharded checkpoint {path} is damaged ({first[:160]}); delete it to start over") from None
    return {**meta, "state_dict": state.get("state_dict", {})}
