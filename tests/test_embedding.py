"""FeatureEmbedding: backend parity, shared tables, pooling, dense normalisation, sequence lookup."""

from __future__ import annotations

import pytest
import torch

from recfunnel.features.batch import TowerInput, make_kjt
from recfunnel.features.embedding import (
    BACKENDS,
    DENSE_STD_EPS,
    SPARSE_GRAD_ROWS,
    FeatureEmbedding,
    build_feature_embedding,
    fbgemm_ops_available,
)
from recfunnel.features.schema import FeatureSchema
from recfunnel.utils.errors import RecfunnelError

SCHEMA = FeatureSchema.from_config({"features": {
    "user_id": {"tower": "user", "kind": "categorical", "source": "user_id", "dim": 4},
    "gender": {"tower": "user", "kind": "categorical", "source": "user.gender", "dim": 3, "pooling": "sum"},
    # shares item_id's table; its own dim (default 16) is ignored in favour of the table's 5
    "hist_items": {"tower": "user", "kind": "sequence", "source": "history.item_id", "table": "item_id"},
    "user_activity": {"tower": "user", "kind": "dense", "source": "user.activity"},
    "item_id": {"tower": "item", "kind": "categorical", "source": "item_id", "dim": 5},
    "genres": {"tower": "item", "kind": "multi_hot", "source": "item.genres", "dim": 3, "pooling": "sum"},
    "item_pop": {"tower": "item", "kind": "dense", "source": "item.pop_count"},
    "hour": {"tower": "context", "kind": "categorical", "source": "context.hour", "dim": 2},
}})
NUM_EMBEDDINGS = {"user_id": 6, "gender": 3, "item_id": 10, "genres": 5, "hour": 24}


def tower_input(bags: dict[str, list[list[int]]], dense: list[list[float]]) -> TowerInput:
    keys = list(bags)
    return TowerInput(
        sparse=make_kjt(keys, [torch.tensor([i for bag in bags[k] for i in bag], dtype=torch.int64) for k in keys],
                        [torch.tensor([len(bag) for bag in bags[k]], dtype=torch.int32) for k in keys]),
        dense=torch.tensor(dense, dtype=torch.float32))


def batch() -> dict[str, TowerInput]:
    """User / context: 3 rows; item: 4 rows (a separate lookup). Includes empty bags."""
    return {
        "user": tower_input({"user_id": [[0], [5], [2]], "gender": [[1], [2], [0]],
                             "hist_items": [[1, 2, 7], [], [4, 4, 9, 0, 3]]}, [[1.0], [2.0], [5.0]]),
        "item": tower_input({"item_id": [[7], [0], [9], [3]], "genres": [[0, 3], [], [4], [1, 2, 4]]},
                            [[10.0], [0.0], [3.0], [7.0]]),
        "context": tower_input({"hour": [[23], [0], [12]]}, [[], [], []]),
    }


def table(fe: FeatureEmbedding, name: str) -> torch.Tensor:
    return fe.ebc.embedding_bags[name].weight


def pair() -> tuple[FeatureEmbedding, FeatureEmbedding]:
    """A torchrec and a torch FeatureEmbedding holding the same weights and dense stats."""
    torch.manual_seed(0)
    rec = FeatureEmbedding(SCHEMA, NUM_EMBEDDINGS, backend="torchrec")
    rec.set_dense_stats("user", [1.5], [2.0])
    rec.set_dense_stats("item", [4.0], [3.0])
    plain = FeatureEmbedding(SCHEMA, NUM_EMBEDDINGS, backend="torch")
    plain.load_state_dict(rec.state_dict(), strict=True)
    return rec, plain


def test_backends_agree_on_outputs_and_gradients():
    rec, plain = pair()
    assert set(rec.state_dict()) == set(plain.state_dict())
    rec.load_state_dict(plain.state_dict(), strict=True)  # and the other way round
    out_rec, out_plain = rec(batch()), plain(batch())
    sizes = {"user": 3, "item": 4, "context": 3}
    torch.manual_seed(1)
    proj = {t: torch.randn(sizes[t], rec.tower_dim(t)) for t in sizes}
    assert (rec.tower_dim("user"), rec.tower_dim("item"), rec.tower_dim("context")) == (4 + 3 + 5 + 1, 5 + 3 + 1, 2)
    for tower, n in sizes.items():
        assert out_rec[tower].shape == out_plain[tower].shape == (n, rec.tower_dim(tower))
        torch.testing.assert_close(out_plain[tower], out_rec[tower], atol=1e-6, rtol=0)
    for out in (out_rec, out_plain):
        sum((out[t] * proj[t]).sum() for t in sizes).backward()
    for name in NUM_EMBEDDINGS:
        torch.testing.assert_close(table(plain, name).grad, table(rec, name).grad, atol=1e-6, rtol=0)


def test_use_torchrec_keeps_the_weights_and_the_outputs():
    """trainer=sharded moves a torch-backend layer into TorchRec's collection before planning."""
    _, plain = pair()
    before = plain(batch())
    weights = {k: v.clone() for k, v in plain.state_dict().items()}
    plain.use_torchrec()
    assert plain.backend == "torchrec" and type(plain.ebc).__name__ == "EmbeddingBagCollection"
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(value, weights[key], atol=0, rtol=0)
    after = plain(batch())
    for tower in before:
        torch.testing.assert_close(after[tower], before[tower], atol=1e-6, rtol=0)


def test_torch_collection_without_gradients_pools_exactly_as_with_them():
    """Under no_grad the torch collection skips embedding_bag for tables whose bags are all empty or all
    hold one id; the result must be the training path's to the bit, whatever the KJT's key order."""
    _, plain = pair()
    ebc = plain.ebc
    full = plain._merge([batch()["user"], batch()["context"]], 3)  # item keys: empty bags only
    mixed = make_kjt(["genres", "hour", "hist_items", "gender", "user_id", "item_id"],  # not table order
                     [torch.tensor(v) for v in ([0, 3, 4], [23, 0, 12], [1, 2, 7, 4], [1, 2, 0], [0, 5, 2], [7, 0, 9])],
                     [torch.tensor(n, dtype=torch.int32) for n in ([2, 0, 1], [1, 1, 1], [3, 0, 1], [1, 1, 1],
                                                                   [1, 1, 1], [1, 1, 1])])
    for kjt in (full, mixed):
        with torch.enable_grad():
            want = ebc(kjt)
        with torch.no_grad():
            got = ebc(kjt)
        assert set(got) == set(want) == set(ebc._keys)
        for key in want:
            assert torch.equal(got[key], want[key]), key
    assert not any(got[k].requires_grad for k in got) and all(want[k].requires_grad for k in want)
    with pytest.raises(KeyError):
        ebc(make_kjt(["user_id"], [torch.tensor([0])], [torch.tensor([1], dtype=torch.int32)]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_table_is_one_parameter_serving_both_towers(backend):
    fe = FeatureEmbedding(SCHEMA, NUM_EMBEDDINGS, backend=backend)
    params = dict(fe.named_parameters())
    assert sorted(params) == sorted(f"ebc.embedding_bags.{t}.weight" for t in NUM_EMBEDDINGS)
    before = fe(batch())
    with torch.no_grad():
        table(fe, "item_id")[7] += 1.0
    after = fe(batch())
    item_cols, hist_cols = slice(0, 5), slice(7, 12)  # item: [item_id | genres | pop]; user: [uid | gender | hist | act]
    # item row 0 is item 7; user row 0's history [1, 2, 7] pools by mean -> +1/3
    torch.testing.assert_close(after["item"][0, item_cols] - before["item"][0, item_cols], torch.ones(5))
    torch.testing.assert_close(after["user"][0, hist_cols] - before["user"][0, hist_cols], torch.full((5,), 1 / 3))
    torch.testing.assert_close(after["user"][1:], before["user"][1:])  # no 7 in their histories
    torch.testing.assert_close(after["item"][1:], before["item"][1:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_pooling_matches_hand_computation(backend):
    fe = FeatureEmbedding(SCHEMA, NUM_EMBEDDINGS, backend=backend)
    out = fe(batch())
    w_item, w_genres, w_gender = table(fe, "item_id"), table(fe, "genres"), table(fe, "gender")
    hist = out["user"][:, 7:12]
    torch.testing.assert_close(hist[0], w_item[[1, 2, 7]].mean(0))  # mean
    torch.testing.assert_close(hist[1], torch.zeros(5))  # empty bag, mean -> zeros
    torch.testing.assert_close(hist[2], w_item[[4, 4, 9, 0, 3]].mean(0))  # repeated id counts twice
    genres = out["item"][:, 5:8]
    torch.testing.assert_close(genres[0], w_genres[[0, 3]].sum(0))  # sum
    torch.testing.assert_close(genres[1], torch.zeros(3))  # empty bag, sum -> zeros
    torch.testing.assert_close(genres[3], w_genres[[1, 2, 4]].sum(0))
    torch.testing.assert_close(out["user"][:, 4:7], w_gender[[1, 2, 0]])
    torch.testing.assert_close(out["context"], table(fe, "hour")[[23, 0, 12]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_normalisation_uses_stats_and_is_saved(backend):
    fe = FeatureEmbedding(SCHEMA, NUM_EMBEDDINGS, backend=backend)
    torch.testing.assert_close(fe(batch())["user"][:, -1], torch.tensor([1.0, 2.0, 5.0]))  # default 0 / 1
    fe.set_dense_stats("user", torch.tensor([2.0]), torch.tensor([4.0]))
    torch.testing.assert_close(fe(batch())["user"][:, -1], torch.tensor([-0.25, 0.0, 0.75]))
    state = fe.state_dict()
    assert state["dense_mean_user"].tolist() == [2.0] and state["dense_std_user"].tolist() == [4.0]
    assert state["dense_mean_context"].shape == (0,)
    fresh = FeatureEmbedding(SCHEMA, NUM_EMBEDDINGS, backend=backend)
    fresh.load_state_dict(state, strict=True)
    torch.testing.assert_close(fresh(batch())["user"], fe(batch())["user"])
    fe.set_dense_stats("item", [1.0], [0.0])  # constant feature: std floored
    assert fe.dense_std_item.item() == pytest.approx(DENSE_STD_EPS)
    with pytest.raises(RecfunnelError, match=r"expected \(1,\)"):
        fe.set_dense_stats("item", [1.0, 2.0], [1.0, 1.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequence_pads_at_start_and_keeps_newest(backend):
    fe = FeatureEmbedding(SCHEMA, NUM_EMBEDDINGS, backend=backend)
    w = table(fe, "item_id")
    kjt = batch()["user"].sparse
    emb, mask = fe.sequence("hist_items", kjt)  # L = longest bag = 5
    assert emb.shape == (3, 5, 5) and mask.shape == (3, 5) and mask.dtype == torch.bool
    assert mask.tolist() == [[False, False, True, True, True], [False] * 5, [True] * 5]
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(2, 5), w[[1, 2, 7]]]))
    torch.testing.assert_close(emb[1], torch.zeros(5, 5))
    torch.testing.assert_close(emb[2], w[[4, 4, 9, 0, 3]])

    emb, mask = fe.sequence("hist_items", kjt, max_len=2)  # truncation keeps the newest
    assert mask.tolist() == [[True, True], [False, False], [True, True]]
    torch.testing.assert_close(emb[0], w[[2, 7]])
    torch.testing.assert_close(emb[2], w[[0, 3]])
    emb.sum().backward()  # gradient reaches exactly the kept rows
    counts = torch.zeros(10).index_add_(0, torch.tensor([2, 7, 0, 3]), torch.ones(4))
    torch.testing.assert_close(w.grad, counts[:, None].expand(10, 5))

    emb, mask = fe.sequence("hist_items", kjt, max_len=7)  # longer than any bag: more padding
    assert mask.sum(1).tolist() == [3, 0, 5] and mask[:, -1].tolist() == [True, False, True]
    torch.testing.assert_close(emb[2, 2:], w[[4, 4, 9, 0, 3]])


def test_bad_backend_and_missing_table_are_user_errors():
    with pytest.raises(RecfunnelError, match="torchrec, torch"):
        FeatureEmbedding(SCHEMA, NUM_EMBEDDINGS, backend="fbgemm")
    with pytest.raises(RecfunnelError, match="auto, torchrec, torch"):
        build_feature_embedding(SCHEMA, NUM_EMBEDDINGS, backend="cuda")
    with pytest.raises(RecfunnelError, match="'genres'"):
        FeatureEmbedding(SCHEMA, {k: v for k, v in NUM_EMBEDDINGS.items() if k != "genres"})
    with pytest.raises(RecfunnelError, match=r"item_id.*used by item_id, hist_items"):
        FeatureEmbedding(SCHEMA, {k: v for k, v in NUM_EMBEDDINGS.items() if k != "item_id"})
    fe = build_feature_embedding(SCHEMA, NUM_EMBEDDINGS)
    assert fe.backend == ("torchrec" if torch.cuda.is_available() and fbgemm_ops_available() else "torch")
    inputs = batch()
    inputs["item"] = tower_input({"item_id": [[1]]}, [[0.0]])
    with pytest.raises(RecfunnelError, match="genres"):
        fe(inputs)


def test_optimizer_step_updates_both_backends_identically():
    rec, plain = pair()
    for fe in (rec, plain):
        opt = torch.optim.SGD(fe.parameters(), lr=0.5)
        sum(out.square().sum() for out in fe(batch()).values()).backward()
        opt.step()
    fresh, _ = pair()
    w0, w_rec = table(fresh, "item_id"), table(rec, "item_id")
    used = [0, 1, 2, 3, 4, 7, 9]
    assert not torch.allclose(w_rec[used], w0[used])  # ids the batch touched moved
    torch.testing.assert_close(w_rec[[5, 6, 8]], w0[[5, 6, 8]])  # the rest did not
    for name in NUM_EMBEDDINGS:
        torch.testing.assert_close(table(plain, name), table(rec, name), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_tables_give_sparse_gradients_equal_to_dense_ones(backend):
    """Tables of SPARSE_GRAD_ROWS rows or more: sparse gradients (pooled, sequence and lookup reads)
    whose values are those of the dense gradient; smaller tables keep dense ones."""
    big = dict(NUM_EMBEDDINGS, item_id=SPARSE_GRAD_ROWS)
    fe = FeatureEmbedding(SCHEMA, big, backend=backend)
    dense_twin = FeatureEmbedding(SCHEMA, big, backend=backend)
    dense_twin.load_state_dict(fe.state_dict())
    for bag in dense_twin.ebc.embedding_bags.values():
        bag.sparse = False
    kjt = batch()["user"].sparse
    for model in (fe, dense_twin):
        out = model(batch())
        loss = sum(o.square().sum() for o in out.values()) + model.sequence("hist_items", kjt)[0].sum()
        (loss + model.lookup("item_id", torch.tensor([[3, -1], [9, 3]])).sum()).backward()
    grad = table(fe, "item_id").grad
    assert grad.is_sparse and not table(fe, "user_id").grad.is_sparse
    torch.testing.assert_close(grad.to_dense(), table(dense_twin, "item_id").grad, atol=1e-6, rtol=0)
