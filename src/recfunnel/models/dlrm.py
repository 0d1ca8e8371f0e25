"""DLRM-style ranker: four named archs, as in TorchRec's ``torchrec/models/dlrm.py``.

A ranking batch scores C candidate items for each of B queries (events or requests)::

    sparse arch:      FeatureEmbedding → one pooled (·, D) vector per sparse feature;
                      query features (user, context) on B rows, repeated for each candidate,
                      item features on B·C rows                         → (B·C, F, D)
                      + optional target attention (``TargetAttention``, DIN-style): the
                      candidate attends to the user's history                → one more (B·C, D)
    dense arch:       MLP over [query dense, item dense, pair dense]    → (B·C, D)
    interaction arch: "dot" — DLRM's pairwise dot products of the F+1 vectors (+ the dense vector)
                      "cat" — the F+1 vectors concatenated
                      "dcn" — DCN-v2 cross layers (Wang et al. 2021) over the concatenation, full or
                              low-rank, "stacked" (cross → over arch) or "parallel" (cross ‖ deep MLP)
    over arch:        MLP → one logit per (query, candidate)            → (B, C)
                      or, for T > 1 objectives, multi-task heads (shared bottom, MMoE, PLE:
                      ``recfunnel.models.multitask``) → (B, C, T), mixed into one score (B, C)

Pair dense features are those only the ranker sees (the retriever's score and rank, genre overlap
with the history, ...); they are normalised with train statistics like the towers' dense features.
Every sparse table has width D = ``embedding_dim`` (the schema's own dims are overridden): the dot
interaction needs one D. The model never parses data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchrec.models.dlrm import InteractionArch as DotInteraction
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet

from recfunnel.data.objectives import Objective, parse_objectives
from recfunnel.features.batch import TowerInput
from recfunnel.features.embedding import build_feature_embedding
from recfunnel.features.schema import QUERY_TOWERS, FeatureSchema
from recfunnel.models.mlp import MLP
from recfunnel.models.multitask import MultiTaskHeads, ObjectiveMix, check_heads
from recfunnel.utils.errors import RecfunnelError

INTERACTIONS = ("dot", "cat", "dcn")
DCN_STRUCTURES = ("stacked", "parallel")


class TargetAttention(nn.Module):
    """DIN-style target attention (Zhou et al. 2018), with a scaled dot product as the scorer: each
    candidate's embedding, projected, attends over the embeddings of the user's latest ``max_len``
    history items, so the history is read differently for each candidate.

    (B, L, D) history, (B, L) mask, (B·C, D) candidates (query-major) → (B·C, D) attended history.
    A user without history gets zeros (padding rows are zero vectors).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.query = nn.Linear(dim, dim, bias=False)
        nn.init.eye_(self.query.weight)  # starts as a plain dot product in the shared table's space
        self.scale = dim ** -0.5

    def forward(self, history: Tensor, mask: Tensor, candidates: Tensor) -> Tensor:
        B, L, D = history.shape
        q = self.query(candidates).view(B, -1, D)                              # (B, C, D)
        scores = torch.einsum("bcd,bld->bcl", q, history) * self.scale
        scores = scores.masked_fill(~mask[:, None, :], torch.finfo(scores.dtype).min)
        return torch.einsum("bcl,bld->bcd", scores.softmax(-1), history).reshape(-1, D)


class SparseArch(nn.Module):
    """The shared feature-embedding layer, per feature: → (B·C, F, D) and the (B·C, P_towers) dense.

    ``target_attention`` ({history, item, max_len}): one more vector per pair, the history
    (a query-tower sequence or multi-hot feature) attended to by the candidate's ``item`` feature
    (``TargetAttention``; both are best read from one table, as ``hist_items`` and ``item_id`` are).
    """

    def __init__(self, schema: FeatureSchema, num_embeddings: Mapping[str, int], embedding_dim: int, backend: str,
                 text_vectors: Mapping[str, np.ndarray] | None = None, target_attention: Mapping | None = None):
        super().__init__()
        self.embedding = build_feature_embedding(schema.with_dim(embedding_dim), num_embeddings, backend, text_vectors)
        self.query_names = [n for t in QUERY_TOWERS for n in self.embedding.sparse_names(t)]
        self.item_names = self.embedding.sparse_names("item")
        self.num_features = len(self.query_names) + len(self.item_names)
        self.num_dense = sum(len(schema.tower(t, "dense")) for t in (*QUERY_TOWERS, "item"))
        self.attend = None
        if target_attention:
            ta = dict(target_attention)
            history, item, max_len = ta.get("history"), ta.get("item"), ta.get("max_len", 50)
            tower = next((t for t in QUERY_TOWERS if history in self.embedding.sparse_names(t)), None)
            bags = [n for n in self.query_names if schema[n].kind in ("sequence", "multi_hot")]
            if tower is None or history not in bags:
                raise RecfunnelError(f"model.net.target_attention.history={history!r} must be a sequence (or multi-hot) "
                                     f"feature of the user or context tower; the schema has: {', '.join(bags) or 'none'}")
            if item not in self.item_names or schema[item].kind == "text":
                raise RecfunnelError(f"model.net.target_attention.item={item!r} must be a sparse feature of the item "
                                     f"tower; the schema has: {', '.join(self.item_names) or 'none'}")
            if not isinstance(max_len, int) or max_len < 1:
                raise RecfunnelError(f"model.net.target_attention.max_len={max_len!r} must be a positive integer")
            self.attend, self.attend_tower = TargetAttention(embedding_dim), tower
            self.attend_history, self.attend_item, self.attend_len = history, item, max_len
            self.num_features += 1

    def forward(self, query: Mapping[str, TowerInput], items: TowerInput, per_query: int) -> tuple[Tensor, Tensor]:
        q = self.embedding.pooled({t: query[t] for t in QUERY_TOWERS}) if self.query_names else {}
        i = self.embedding.pooled({"item": items})
        query_sparse = [q[n].repeat_interleave(per_query, 0) for n in self.query_names]
        attended = []
        if self.attend is not None:
            history, mask = self.embedding.sequence(self.attend_history, query[self.attend_tower].sparse,
                                                    self.attend_len)
            attended = [self.attend(history, mask, i[self.attend_item])]
        sparse = torch.stack(query_sparse + [i[n] for n in self.item_names] + attended, dim=1)
        query_dense = torch.cat([self.embedding.dense(t, query[t]) for t in QUERY_TOWERS], dim=1)
        dense = torch.cat([query_dense.repeat_interleave(per_query, 0), self.embedding.dense("item", items)], dim=1)
        return sparse, dense


class DenseArch(MLP):
    """(N, P) dense features → (N, D), the vector that joins the sparse ones in the interaction."""


class Interaction(nn.Module):
    """(N, D) dense vector + (N, F, D) sparse vectors → (N, out_dim)."""

    def __init__(self, kind: str, num_sparse: int, dim: int, dcn: Mapping | None = None):
        super().__init__()
        if kind not in INTERACTIONS:
            raise RecfunnelError(f"model.net.interaction={kind!r} is not valid; choose one of: {', '.join(INTERACTIONS)}")
        self.kind, flat = kind, (num_sparse + 1) * dim
        if kind == "dot":
            self.arch = DotInteraction(num_sparse)
            self.out_dim = dim + (num_sparse + 1) * num_sparse // 2
        elif kind == "cat":
            self.out_dim = flat
        else:
            dcn = dict(dcn or {})
            layers, rank = dcn.get("layers", 3), dcn.get("rank")
            for key, value, allow_null in (("layers", layers, False), ("rank", rank, True)):
                if not (allow_null and value is None) and (not isinstance(value, int) or value < 1):
                    raise RecfunnelError(f"model.net.dcn.{key}={value!r} must be a positive integer"
                                         + (" or null (full rank)" if allow_null else ""))
            structure, deep = dcn.get("structure", "stacked"), list(dcn.get("deep", [256]))
            if structure not in DCN_STRUCTURES:
                raise RecfunnelError(f"model.net.dcn.structure={structure!r} is not valid; choose one of: "
                                     f"{', '.join(DCN_STRUCTURES)}")
            self.cross = CrossNet(flat, layers) if rank is None else LowRankCrossNet(flat, layers, int(rank))
            self.deep = MLP(flat, deep[:-1], deep[-1]) if structure == "parallel" and deep else None
            self.out_dim = flat + (deep[-1] if self.deep is not None else 0)

    def forward(self, dense: Tensor, sparse: Tensor) -> Tensor:
        if self.kind == "dot":
            return self.arch(dense, sparse)
        flat = torch.cat([dense.unsqueeze(1), sparse], dim=1).flatten(1)
        if self.kind == "cat":
            return flat
        crossed = self.cross(flat)
        return crossed if self.deep is None else torch.cat([crossed, self.deep(flat)], dim=1)


class OverArch(nn.Module):
    """(N, in_dim) → (N,) logits: ``depth`` hidden layers of ``width``."""

    def __init__(self, in_dim: int, width: int, depth: int, dropout: float):
        super().__init__()
        self.mlp = MLP(in_dim, [width] * depth, 1, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x).squeeze(-1)


class DLRM(nn.Module):
    """Args:
        schema, num_embeddings: the ranker's features and table sizes (from its data pipeline).
        num_pair_dense: P, the number of per-(query, item) dense features.
        embedding_dim: D, the width of every embedding table and of the dense arch's output.
        dense_hidden: hidden widths of the dense arch.
        interaction: "dot" | "cat" | "dcn"; ``dcn``: {layers, rank (None = full), structure, deep}.
        top_width, top_depth, dropout: the over arch.
        dense_stats: {tower: (mean, std)} for user/context/item, and "pair" for the pair features.
        backend: embedding backend, "auto" | "torchrec" | "torch".
        objectives: the T objectives it predicts (``recfunnel.data.objectives``); None: engagement alone.
        multitask: None (one objective: the over arch gives its logit) or the ``MultiTaskHeads``
            arguments ({kind, experts, shared_experts, expert_hidden, tower_hidden}) for T > 1.
        text_vectors: {text feature: (R, E)} pretrained vectors of the schema's text features.
        target_attention: None, or {history, item, max_len}: the candidate attends over the history
            (``TargetAttention``), one more sparse vector in the interaction.

    ``heads(batch)`` gives the (B, C, T) outputs; ``forward`` mixes them into one (B, C) score with
    ``mix`` (``ObjectiveMix``; every objective weighs 1 until the funnel sets its own).
    """

    def __init__(self, schema: FeatureSchema, num_embeddings: Mapping[str, int], num_pair_dense: int,
                 embedding_dim: int = 32, dense_hidden: Sequence[int] = (64,), interaction: str = "dot",
                 dcn: Mapping | None = None, top_width: int = 256, top_depth: int = 2, dropout: float = 0.1,
                 dense_stats: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None, backend: str = "auto",
                 objectives: Sequence[Objective] | None = None, multitask: Mapping | None = None,
                 text_vectors: Mapping[str, np.ndarray] | None = None, target_attention: Mapping | None = None):
        super().__init__()
        self.objectives = list(objectives or parse_objectives(None))
        check_heads(self.objectives, multitask)
        self.sparse_arch = SparseArch(schema, num_embeddings, embedding_dim, backend, text_vectors, target_attention)
        stats = dict(dense_stats or {})
        for tower in (*QUERY_TOWERS, "item"):
            if tower in stats:
                self.sparse_arch.embedding.set_dense_stats(tower, *stats[tower])
        num_dense = self.sparse_arch.num_dense + num_pair_dense
        if num_dense == 0:
            raise RecfunnelError("the ranker has no dense input: give the schema a dense feature or keep the pair "
                                 "features (the retriever's score) on")
        mean, std = stats.get("pair", (np.zeros(num_pair_dense), np.ones(num_pair_dense)))
        self.register_buffer("pair_mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.register_buffer("pair_std", torch.as_tensor(np.asarray(std), dtype=torch.float32).clamp(min=1e-6))
        for name, buf in (("mean", self.pair_mean), ("std", self.pair_std)):
            if buf.shape != (num_pair_dense,):
                raise RecfunnelError(f"pair dense {name} has shape {tuple(buf.shape)}; expected ({num_pair_dense},)")
        self.dense_arch = DenseArch(num_dense, dense_hidden, embedding_dim)
        self.interaction = Interaction(interaction, self.sparse_arch.num_features, embedding_dim, dcn)
        self.multitask = multitask is not None
        if not self.multitask:
            self.over_arch = OverArch(self.interaction.out_dim, top_width, top_depth, dropout)
        else:
            self.heads_arch = MultiTaskHeads(self.interaction.out_dim, len(self.objectives), dropout=dropout, **dict(multitask))
        self.mix = ObjectiveMix(self.objectives)

    def heads(self, batch: Mapping[str, object]) -> Tensor:
        """(B, C, T) head outputs for ``batch["cand"]`` (item tower, B·C rows, query-major) given the
        query towers ``batch["user"]``, ``batch["context"]`` (B rows) and ``batch["pair_dense"]`` (B, C, P):
        a logit per bce objective, a value per mse objective."""
        pair = batch["pair_dense"]
        B, C, P = pair.shape
        sparse, dense = self.sparse_arch(batch, batch["cand"], C)
        pair = ((pair - self.pair_mean) / self.pair_std).reshape(B * C, P)
        x = self.interaction(self.dense_arch(torch.cat([dense, pair], dim=1)), sparse)
        out = self.heads_arch(x) if self.multitask else self.over_arch(x).unsqueeze(-1)
        return out.view(B, C, -1)

    def forward(self, batch: Mapping[str, object]) -> Tensor:
        """(B, C) scores: the heads mixed by ``mix`` (with one objective: its logit)."""
        return self.mix(self.heads(batch))
