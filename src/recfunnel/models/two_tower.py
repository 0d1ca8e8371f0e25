"""Two-tower retrieval model: a query tower (user + context features + history encoder) and an
item tower, each the shared feature-embedding layer followed by an MLP, meeting in a dot product.

    user tower:  concat(FeatureEmbedding[user], FeatureEmbedding[context], encoder(history)) → MLP → u (B, d)
    item tower:  FeatureEmbedding[item] → MLP → v (I, d)
    score(u, v) = u · v   (the loss divides by its temperature; ranking is unchanged by it)

With ``normalize=True`` both vectors are L2-normalised, so the score is a cosine; a FAISS index
over ``item_vectors`` must then use inner product on the same normalised vectors
(``recfunnel.serving.index``). The model never parses data: it takes ``TowerInput``s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recfunnel.features.batch import TowerInput
from recfunnel.features.embedding import build_feature_embedding
from recfunnel.features.schema import FeatureSchema
from recfunnel.models.mlp import MLP
from recfunnel.models.sequence import build_encoder
from recfunnel.utils.config_checks import SIDE_WITH_WINDOWS
from recfunnel.utils.errors import RecfunnelError


class TwoTower(nn.Module):
    """Args:
        schema, num_embeddings: the features and their table sizes (from the data pipeline).
        dim: output dimension d of both towers.
        user_hidden, item_hidden: hidden widths of the towers' MLPs.
        normalize: L2-normalise both outputs.
        history_encoder: "none" | "recency" | "attention" | "recency+attention" (``models/sequence.py``).
        history_feature: the sequence feature the encoder reads (its table gives the token embedding).
        history_side: sequence features aligned with it (e.g. ``hist_age``) added to each token.
        encoder: extra keyword arguments of the encoder (layers, heads, dropout, width).
        dense_stats: {tower: (mean, std)} of dense features over the train split.
        backend: embedding backend, "auto" | "torchrec" | "torch".
        text_vectors: {text feature: (R, E)} pretrained vectors of the schema's text features.
    """

    def __init__(self, schema: FeatureSchema, num_embeddings: Mapping[str, int], dim: int = 64,
                 user_hidden: Sequence[int] = (256,), item_hidden: Sequence[int] = (256,), dropout: float = 0.1,
                 normalize: bool = True, history_encoder: str = "none", history_feature: str = "hist_items",
                 history_side: Sequence[str] = (), encoder: Mapping | None = None,
                 dense_stats: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None, backend: str = "auto",
                 text_vectors: Mapping[str, np.ndarray] | None = None):
        super().__init__()
        self.embedding = build_feature_embedding(schema, num_embeddings, backend, text_vectors)
        for tower, (mean, std) in (dense_stats or {}).items():
            self.embedding.set_dense_stats(tower, mean, std)
        self.normalize = normalize
        self.history_feature, self.history_side = history_feature, list(history_side)
        query_dim = self.embedding.tower_dim("user") + self.embedding.tower_dim("context")
        self.encoder = None
        if history_encoder != "none":
            names = schema.names
            for name in [history_feature, *self.history_side]:
                if name not in names or schema[name].tower != "user":
                    raise RecfunnelError(f"model.net.history: '{name}' is not a user-tower feature of schema "
                                         f"'{schema.name}'; choose from {[f.name for f in schema.tower('user', 'sparse')]}")
            spec = schema[history_feature]
            token_dim = schema[spec.table_name].dim
            self.max_len = spec.max_len
            self.side_proj = nn.ModuleList(nn.Linear(schema[schema[n].table_name].dim, token_dim, bias=False)
                                           for n in self.history_side)
            self.encoder = build_encoder(history_encoder, token_dim, dim, spec.max_len, **dict(encoder or {}))
            query_dim += dim
        self.user_mlp = MLP(query_dim, user_hidden, dim, dropout)
        self.item_mlp = MLP(self.embedding.tower_dim("item"), item_hidden, dim, dropout)

    def _out(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    def pair_vectors(self, batch: Mapping[str, TowerInput]) -> tuple[Tensor, Tensor]:
        """(query (B, d), item (B, d)) of a training batch: the three towers' features go through one
        call of the embedding collection (one lookup per table instead of two, half of them empty)."""
        emb = self.embedding({"user": batch["user"], "context": batch["context"], "item": batch["item"]})
        return self.user_vectors(batch, emb), self.item_vectors(batch["item"], emb)

    def user_vectors(self, batch: Mapping[str, TowerInput], emb: Mapping[str, Tensor] | None = None) -> Tensor:
        """Query vectors (B, d) from ``batch["user"]`` and ``batch["context"]`` (``emb``: their
        embedding output when already computed)."""
        if emb is None:
            emb = self.embedding({"user": batch["user"], "context": batch["context"]})
        parts = [emb["user"], emb["context"]]
        if self.encoder is not None:
            if "window" in batch:
                parts.append(self._encode_windows(batch["window"]))
            else:
                kjt = batch["user"].sparse
                seq, mask = self.embedding.sequence(self.history_feature, kjt, self.max_len)
                side = None
                for name, proj in zip(self.history_side, self.side_proj):
                    s, _ = self.embedding.sequence(name, kjt, self.max_len)
                    side = proj(s) if side is None else side + proj(s)
                parts.append(self.encoder(seq, mask, side))
        return self._out(self.user_mlp(torch.cat(parts, dim=1)))

    def _encode_windows(self, window: Mapping[str, Tensor]) -> Tensor:
        """History encodings of every event of a window batch, one causal pass per window.

        window["tokens"]: (W, L) item ids before each window's last event, −1 = padding (a row of
        only padding serves events with no earlier item); window["query_index"]: (B,) flat position
        in (W·L) of the token just before each event. Returns (B, d).

        As in SASRec's training, an event early in its window reads a shorter prefix, with its newest
        item at an earlier position; the window's last event reads exactly what the per-event pass
        (used for evaluation) reads: its last L items, newest at position L−1.
        """
        if self.history_side:
            raise RecfunnelError(SIDE_WITH_WINDOWS)
        tokens = window["tokens"]
        out = self.encoder(self.embedding.lookup(self.history_feature, tokens), tokens >= 0, all_positions=True)
        return out.reshape(-1, out.shape[-1])[window["query_index"]]

    def item_vectors(self, items: TowerInput, emb: Mapping[str, Tensor] | None = None) -> Tensor:
        """Item vectors (I, d) from item-tower inputs (``emb``: their embedding output when already computed)."""
        if emb is None:
            emb = self.embedding({"item": items})
        return self._out(self.item_mlp(emb["item"]))
