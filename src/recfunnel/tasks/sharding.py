"""``trainer=sharded``: TorchRec's model parallelism under Lightning.

``ShardedStrategy`` is Lightning's DDP strategy with one change of what gets wrapped: instead of
``DistributedDataParallel(task)`` it wraps the task in TorchRec's ``DistributedModelParallel``
(DMP), which

* shards every embedding-bag collection of the task (the ``ebc`` of each ``FeatureEmbedding``) by a
  plan from TorchRec's planner, restricted to ``types`` and per-table ``tables`` overrides;
* updates those tables with a *fused* optimizer applied in backward (``optimizer``: fbgemm's
  kernels update the rows a batch touched during the backward pass; no gradient is kept);
* wraps the rest of the task (MLPs, encoders, data-parallel tables) in ``DistributedDataParallel``
  once; the task's own optimizer (``configure_optimizers``) then sees only those parameters.

Every process runs every forward of the collections (each call is a collective), so evaluation
batches are split into the same number of batches on every rank (``recfunnel.data.loaders``) and
the whole job runs on every rank (``recfunnel.utils.dist``).

Checkpoints are folders written by ``torch.distributed.checkpoint``: one shard file per rank of the
model's weights (a table lives on the ranks the plan gave it) and of the fused optimizer's state,
plus ``meta.pt`` (rank 0: step, epoch, loops, callbacks, the dense optimizer, world size and plan).
``recfunnel.tasks.checkpoints.load_checkpoint`` reads such a folder into an ordinary checkpoint
(whole tensors) in one process, so a finished sharded run is served and evaluated like any other.

Sharding types: ``data_parallel``, ``table_wise``, ``column_wise``, ``table_column_wise`` (CPU and
CUDA) and ``row_wise`` (CUDA only: on CPU the planner cannot place it, and gloo cannot run it).
Fused optimizers: ``sgd``, ``adagrad``, ``rowwise_adagrad`` (CPU and CUDA), ``adam`` (CUDA only).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn

from recfunnel.features.embedding import FeatureEmbedding, fbgemm_ops_available
from recfunnel.tasks.checkpoints import SHARDED_META as META
from recfunnel.tasks.checkpoints import sharded_meta
from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.run_info import update_run_info

log = logging.getLogger(__name__)

DEFAULT_TYPES, DEFAULT_OPTIMIZER = ("table_wise",), "rowwise_adagrad"  # ShardedStrategy's, without a config
SHARDING_TYPES = ("data_parallel", "table_wise", "column_wise", "table_column_wise", "row_wise")
CUDA_ONLY_TYPES = ("row_wise",)
FUSED_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam")
CUDA_ONLY_OPTIMIZERS = ("adam",)
PLAN_FILE = "sharding_plan.txt"


def check_sharding(types: Sequence[str], tables: Mapping[str, str] | None, optimizer: str, accelerator: str,
                   world_size: int | None) -> None:
    """One ``RecfunnelError`` for a sharding config that cannot run: an unknown or (on CPU) unsupported
    sharding type or fused optimizer, or fewer than 2 processes."""
    where = "trainer.sharding"
    for key, value in [("types", t) for t in types] + [(f"tables.{k}", v) for k, v in (tables or {}).items()]:
        if value not in SHARDING_TYPES:
            raise RecfunnelError(f"{where}.{key}={value!r} is not a sharding type; choose from {', '.join(SHARDING_TYPES)}")
        if value in CUDA_ONLY_TYPES and accelerator == "cpu":
            raise RecfunnelError(f"{where}.{key}={value} needs CUDA (nccl): on CPU (gloo) TorchRec cannot shard row-wise; "
                                 f"use one of {', '.join(t for t in SHARDING_TYPES if t not in CUDA_ONLY_TYPES)}")
    if not types:
        raise RecfunnelError(f"{where}.types is empty; list the sharding types the planner may choose from")
    if optimizer not in FUSED_OPTIMIZERS:
        raise RecfunnelError(f"{where}.optimizer={optimizer!r} is not valid; choose from {', '.join(FUSED_OPTIMIZERS)}")
    if optimizer in CUDA_ONLY_OPTIMIZERS and accelerator == "cpu":
        raise RecfunnelError(f"{where}.optimizer={optimizer} has no CPU kernel in fbgemm; on CPU use sgd, adagrad or "
                             "rowwise_adagrad")
    if world_size is not None and world_size < 2:
        raise RecfunnelError(f"trainer=sharded runs {world_size} process: sharding needs at least 2; set "
                             "trainer.devices=2 (or more), or use trainer=default for one process")


def _optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    from torchrec.optim import RowWiseAdagrad

    return {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "rowwise_adagrad": RowWiseAdagrad,
            "adam": torch.optim.Adam}[name]


def plan_summary(plan: Any) -> dict[str, dict[str, Any]]:
    """{table: {"type": sharding type, "ranks": [...], "module": path}} of a TorchRec ``ShardingPlan``."""
    out = {}
    for module_path, module_plan in plan.plan.items():
        for table, sharding in module_plan.items():
            out[table] = {"type": sharding.sharding_type, "ranks": list(sharding.ranks or []), "module": module_path}
    return out


class ShardedStrategy(DDPStrategy):
    """Lightning strategy: TorchRec ``DistributedModelParallel`` over the task (see the module docstring).

    Args:
        types: sharding types the planner may choose from for every table.
        tables: {table: sharding type} overrides.
        optimizer: the fused optimizer of the sharded tables; ``lr`` its learning rate (None: the
            task's ``lr``).
        memory_gb: memory per rank the planner may fill (None: the device's); a plan that does not
            fit is one clear error.
        min_partition: the narrowest column shard of a column-wise table (None: TorchRec's 128, so
            tables narrower than 256 stay in one shard).
        run_dir: where the plan is written (``sharding_plan.txt``, ``run_info.json`` under ``sharding``).
        **kwargs: those of ``DDPStrategy`` (process group backend, timeout, ...).
    """

    strategy_name = "recfunnel_sharded"

    def __init__(self, types: Sequence[str] = DEFAULT_TYPES, tables: Mapping[str, str] | None = None,
                 optimizer: str = DEFAULT_OPTIMIZER, lr: float | None = None,
                 memory_gb: float | None = None, min_partition: int | None = None, run_dir: str | Path | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.types, self.tables = list(types), dict(tables or {})
        self.optimizer_name, self.optimizer_lr = optimizer, lr
        self.memory_gb, self.min_partition = memory_gb, min_partition
        self.run_dir = Path(run_dir) if run_dir else None
        self.plan: Any = None

    # -- setup ---------------------------------------------------------------------------------
    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True  # a checkpoint's shards load into the sharded model

    def setup(self, trainer: pl.Trainer) -> None:
        """As ``DDPStrategy.setup``, with the DMP wrapping for fitting *and* evaluation (every forward
        of a sharded collection needs all ranks), and the fused tables left out of the task's optimizer."""
        check_sharding(self.types, self.tables, self.optimizer_name, self.root_device.type, self.world_size)
        self.accelerator.setup(trainer)
        self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        self.model = self.shard(self.lightning_module)
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        if trainer.state.fn == TrainerFn.FITTING:
            from lightning_fabric.utilities.optimizer import _optimizers_to_device

            _optimizers_to_device(self.optimizers, self.root_device)

    def shard(self, module: pl.LightningModule) -> nn.Module:
        """The DMP-wrapped ``module`` (built once per module: a later Trainer on the same task reuses it)."""
        dmp = module.__dict__.get("_dmp")
        if dmp is not None:
            self.plan = module.__dict__["_sharding_plan"]
            return dmp
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.types import ShardingEnv
        from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

        embeddings = [m for m in module.modules() if isinstance(m, FeatureEmbedding)]
        if not embeddings:
            raise RecfunnelError(f"trainer=sharded: the model ({type(module).__name__}) has no feature-embedding layer "
                                 "to shard")
        if not fbgemm_ops_available():
            raise RecfunnelError("trainer=sharded needs fbgemm's kernels for this device (fbgemm-gpu, or "
                                 "fbgemm-gpu-cpu on a machine without CUDA); install the one README.md names")
        for e in embeddings:
            e.use_torchrec()  # the planner shards TorchRec's collection, with the model's weights
        tables = {name for e in embeddings for name in e.ebc.embedding_bags}
        unknown = sorted(set(self.tables) - tables)
        if unknown:
            raise RecfunnelError(f"trainer.sharding.tables names {', '.join(unknown)}, not tables of this model; its "
                                 f"tables are {', '.join(sorted(tables))}")
        lr = self.optimizer_lr if self.optimizer_lr is not None else getattr(module, "lr", 0.01)
        for e in embeddings:
            apply_optimizer_in_backward(_optimizer_class(self.optimizer_name), e.ebc.parameters(), {"lr": lr})
        sharders = [EmbeddingBagCollectionSharder()]
        self.plan = self._plan(module, sharders, tables)
        weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
        pg = dist.GroupMember.WORLD
        dmp = DistributedModelParallel(module, env=ShardingEnv.from_process_group(pg), plan=self.plan,
                                       sharders=sharders, device=self.root_device)
        copy_weights(module.state_dict(), weights)  # DMP initialises its shards afresh: keep the model's weights
        module.__dict__["_dmp"] = dmp  # not a submodule: the task's state dict stays the model's own
        module.__dict__["_sharding_plan"] = self.plan
        self._record_plan()
        return dmp

    def _plan(self, module: nn.Module, sharders: list, tables: set[str]) -> Any:
        from torchrec.distributed.planner import EmbeddingShardingPlanner
        from torchrec.distributed.planner.types import (
            HardwareConfig,
            KernelConfig,
            ParameterConstraints,
            PlannerError,
            TopologyFactory,
            TrainerConfig,
        )

        device = self.root_device.type
        cap = int(self.memory_gb * 2**30) if self.memory_gb else None
        local = self.num_processes
        trainer_config = TrainerConfig(world_size=self.world_size, local_world_size=local,
                                       **({"hbm_cap_bytes": cap} if cap and device == "cuda" else {}),
                                       **({"ddr_cap_bytes": cap} if cap and device == "cpu" else {}))
        topology = TopologyFactory.create_topology(trainer_config=trainer_config, hardware_config=HardwareConfig(),
                                                   kernel_config=KernelConfig(compute_device=device))
        constraints = {t: ParameterConstraints(sharding_types=[self.tables[t]] if t in self.tables else self.types,
                                               **({"min_partition": self.min_partition} if self.min_partition else {}))
                       for t in tables}
        planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
        # rank 0 plans and sends the plan, or its error, to every rank (plans made apart can differ: the
        # planner reads the free memory), so that all ranks shard alike or all stop with the same line
        found: list[Any] = [None]
        if self.global_rank == 0:
            try:
                found = [planner.plan(module, sharders)]
            except PlannerError as e:
                found = [str(e).strip().splitlines()[0][:300]]
        dist.broadcast_object_list(found, src=0)
        if isinstance(found[0], str):
            raise RecfunnelError(f"trainer=sharded: TorchRec's planner found no plan for these tables with "
                                 f"{self.world_size} ranks{f' and {self.memory_gb} GB each' if cap else ''} "
                                 f"({found[0]}); allow more sharding types (trainer.sharding.types), more memory "
                                 "(trainer.sharding.memory_gb) or more processes")
        return found[0]

    def _record_plan(self) -> None:
        if self.run_dir is None or not self.is_global_zero:
            return
        summary = plan_summary(self.plan)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / PLAN_FILE).write_text(str(self.plan) + "\n")
        update_run_info(self.run_dir, {"sharding": {"world_size": self.world_size, "optimizer": self.optimizer_name,
                                                    "tables": summary}})
        log.info("sharding plan (%d ranks): %s", self.world_size,
                 ", ".join(f"{t} {s['type']} on {s['ranks']}" for t, s in summary.items()))

    @property
    def dmp(self) -> Any:
        return self.lightning_module.__dict__["_dmp"]

    def setup_optimizers(self, trainer: pl.Trainer) -> None:
        """The task's optimizers, less the tables the fused optimizer updates in backward."""
        super().setup_optimizers(trainer)
        fused = {id(p) for p in self.dmp.fused_optimizer.params.values()}
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in fused]

    # -- checkpoints: a folder per checkpoint, a shard per rank ----------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Write ``filepath`` as a folder: the weights and fused optimizer state by
        ``torch.distributed.checkpoint`` (collective), the rest in ``meta.pt``. The folder replaces an
        older one only once complete."""
        import torch.distributed.checkpoint as dcp

        path = Path(filepath)
        partial = path.with_name(path.name + ".partial")
        if self.is_global_zero:
            shutil.rmtree(partial, ignore_errors=True)
        self.barrier()
        meta = {k: v for k, v in checkpoint.items() if k != "state_dict"}
        dcp.save({"state_dict": checkpoint["state_dict"], "fused_optimizer": self.dmp.fused_optimizer.state_dict()},
                 checkpoint_id=partial)
        if self.is_global_zero:
            meta.update(world_size=self.world_size, sharding=plan_summary(self.plan))
            torch.save(meta, partial / META)
            _replace_folder(partial, path)
        self.barrier()

    def remove_checkpoint(self, filepath: Any) -> None:
        if self.is_global_zero:
            path = Path(filepath)
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Load a sharded checkpoint folder into the sharded model and fused optimizer, in place; returns
        the rest (``meta.pt``) with the model's ``state_dict`` for Lightning's hooks."""
        import torch.distributed.checkpoint as dcp

        path = Path(checkpoint_path)
        if not path.is_dir():
            raise RecfunnelError(f"{path} is not a sharded checkpoint (a folder written by trainer=sharded); a run "
                                 "resumes only with the strategy it was trained with")
        meta = sharded_meta(path)
        if meta.get("world_size") != self.world_size:
            raise RecfunnelError(f"{path} was written by {meta.get('world_size')} processes and this run has "
                                 f"{self.world_size}: resume it with trainer.devices (× trainer.num_nodes) = "
                                 f"{meta.get('world_size')}, or start a new run directory")
        state = {"state_dict": self.lightning_module.state_dict()}
        fused = self.dmp.fused_optimizer.state_dict()
        if fused.get("state"):
            state["fused_optimizer"] = fused
        dcp.load(state, checkpoint_id=path)  # in place: the state dict's tensors are the model's
        if "fused_optimizer" in state:
            self.dmp.fused_optimizer.load_state_dict(state["fused_optimizer"])
        return {**meta, "state_dict": state["state_dict"]}

    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        """Nothing to do: ``load_checkpoint`` loaded the weights in place."""


@torch.no_grad()
def copy_weights(sharded: Mapping[str, Any], full: Mapping[str, torch.Tensor]) -> None:
    """Copy whole tensors ``full`` into a sharded model's state dict ``sharded`` (in place): each local
    shard of a ``ShardedTensor`` gets its slice, a plain tensor all of it."""
    for key, target in sharded.items():
        source = full[key]
        if hasattr(target, "local_shards"):
            for shard in target.local_shards():
                offsets, sizes = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                part = source[tuple(slice(o, o + n) for o, n in zip(offsets, sizes))]
                shard.tensor.copy_(part.to(shard.tensor.device, shard.tensor.dtype))
        elif isinstance(target, torch.Tensor):
            target.copy_(source.to(target.device, target.dtype))


def _replace_folder(new: Path, path: Path) -> None:
    """Move the complete folder ``new`` to ``path``, replacing what is there (a file or a folder)."""
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.is_dir():
        path.rename(old)
    elif path.exists():
        path.unlink()
    new.rename(path)
    shutil.rmtree(old, ignore_errors=True)
