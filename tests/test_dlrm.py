"""The DLRM ranker (src/recfunnel/models/dlrm.py): shapes, the shared query side, the interaction
archs checked by hand (pairwise dots, DCN-v2 cross layers), one table width, config errors, and
the two embedding backends agreeing on one state dict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet

from recfunnel.models.dlrm import DLRM, Interaction
from recfunnel.utils.errors import RecfunnelError

from helpers import NUM_EMB, SCHEMA, P, make_model, random_raw, to_batch

TABLES = ("user_id", "gender", "hour", "item_id", "genres")
CONFIGS = [
    ("dot", None),
    ("cat", None),
    ("dcn", {"layers": 2, "rank": None, "structure": "stacked"}),
    ("dcn", {"layers": 2, "rank": 3, "structure": "stacked"}),
    ("dcn", {"layers": 2, "rank": None, "structure": "parallel", "deep": [16, 8]}),
    ("dcn", {"layers": 2, "rank": 3, "structure": "parallel", "deep": [16, 8]}),
]
IDS = ["dot", "cat", "dcn-stacked-full", "dcn-stacked-lowrank", "dcn-parallel-full", "dcn-parallel-lowrank"]

@pytest.mark.parametrize("interaction, dcn", CONFIGS, ids=IDS)
def test_forward_shapes_and_gradients_reach_every_table(interaction, dcn):
    model = make_model(interaction, dcn)
    raw = random_raw(4, 5, seed=1)
    logits = model(to_batch(raw))
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()
    assert logits.std() > 0  # not a constant
    logits.sum().backward()
    bags = model.sparse_arch.embedding.ebc.embedding_bags
    assert sorted(bags) == sorted(TABLES)
    for name in TABLES:
        grad = bags[name].weight.grad
        assert grad is not None and grad.abs().sum() > 0, f"no gradient reached table {name}"
    # the item-id table gets gradient through the history too (history ids 10..19, candidates 0..9)
    hist_ids = sorted({i for q in raw["queries"] for i in q["hist"]})
    assert hist_ids and (bags["item_id"].weight.grad[hist_ids].abs().sum(1) > 0).all()
    untouched = sorted(set(range(10, 20)) - set(hist_ids))
    assert (bags["item_id"].weight.grad[untouched] == 0).all()  # and only to the rows it used
    for p in (*model.dense_arch.parameters(), *model.over_arch.parameters(), *model.interaction.parameters()):
        assert p.grad is not None


@pytest.mark.parametrize("interaction, dcn", CONFIGS, ids=IDS)
def test_query_side_is_shared_by_its_candidates_and_queries_are_independent(interaction, dcn):
    model = make_model(interaction, dcn).eval()
    B, C = 3, 6
    raw = random_raw(B, C, seed=2)
    with torch.no_grad():
        base = model(to_batch(raw))
        # permute the candidates (and their pair features) of query 1: its logits permute the same way
        perm = np.array([3, 0, 5, 1, 4, 2])
        permuted = {**raw, "cands": [row[:] for row in raw["cands"]], "pair": raw["pair"].copy()}
        permuted["cands"][1] = [raw["cands"][1][j] for j in perm]
        permuted["pair"][1] = raw["pair"][1][perm]
        out = model(to_batch(permuted))
        torch.testing.assert_close(out[1], base[1][perm], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out[[0, 2]], base[[0, 2]], rtol=1e-5, atol=1e-6)
        # change everything about query 0 (its user, history, hour, candidates, pair features)
        other = random_raw(B, C, seed=3)
        changed = {"queries": [other["queries"][0]] + raw["queries"][1:],
                   "cands": [other["cands"][0]] + raw["cands"][1:],
                   "pair": np.concatenate([other["pair"][:1], raw["pair"][1:]])}
        out = model(to_batch(changed))
    torch.testing.assert_close(out[1:], base[1:], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[0], base[0])  # ... while query 0's own logits do change


def test_query_features_reach_every_candidate():
    """Changing only the query's user changes all of its candidates' logits (query repeated per candidate)."""
    model = make_model("dot").eval()
    raw = random_raw(2, 4, seed=4)
    changed = {**raw, "queries": [dict(raw["queries"][0], user_id=(raw["queries"][0]["user_id"] + 1) % 10),
                                  raw["queries"][1]]}
    with torch.no_grad():
        a, b = model(to_batch(raw)), model(to_batch(changed))
    assert (a[0] != b[0]).all() and torch.equal(a[1], b[1])


def test_dot_interaction_is_dense_then_upper_triangle_dot_products():
    dense = torch.tensor([[1.0, 2.0, 0.0]])
    sparse = torch.tensor([[[0.0, 1.0, 1.0], [2.0, -1.0, 3.0]]])  # F = 2, D = 3
    inter = Interaction("dot", num_sparse=2, dim=3)
    out = inter(dense, sparse)
    # pairs of [dense, s1, s2] in upper-triangle order: (d,s1) (d,s2) (s1,s2)
    d_s1 = 1 * 0 + 2 * 1 + 0 * 1  # 2
    d_s2 = 1 * 2 + 2 * -1 + 0 * 3  # 0
    s1_s2 = 0 * 2 + 1 * -1 + 1 * 3  # 2
    assert inter.out_dim == 3 + 2 * 3 // 2 == 6
    assert out.tolist() == [[1.0, 2.0, 0.0, d_s1, d_s2, s1_s2]]
    # in general: D + F(F+1)/2 columns, each the dot product of one pair
    F, Dd = 4, 5
    gen = torch.Generator().manual_seed(0)
    dense, sparse = torch.randn(7, Dd, generator=gen), torch.randn(7, F, Dd, generator=gen)
    inter = Interaction("dot", num_sparse=F, dim=Dd)
    out = inter(dense, sparse)
    assert out.shape == (7, Dd + F * (F + 1) // 2) and inter.out_dim == out.shape[1]
    vecs = torch.cat([dense[:, None], sparse], 1)
    want = [dense] + [(vecs[:, i] * vecs[:, j]).sum(1, keepdim=True) for i in range(F + 1) for j in range(i + 1, F + 1)]
    torch.testing.assert_close(out, torch.cat(want, 1))


def test_cat_interaction_is_the_flat_concatenation():
    gen = torch.Generator().manual_seed(1)
    dense, sparse = torch.randn(3, 4, generator=gen), torch.randn(3, 2, 4, generator=gen)
    inter = Interaction("cat", num_sparse=2, dim=4)
    out = inter(dense, sparse)
    assert inter.out_dim == 12
    assert torch.equal(out, torch.cat([dense, sparse[:, 0], sparse[:, 1]], 1))


def _randomise(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)  # biases start at zero: make them count


def test_low_rank_dcn_cross_layers_by_hand():
    F, Dd, rank = 2, 3, 2
    inter = Interaction("dcn", num_sparse=F, dim=Dd, dcn={"layers": 2, "rank": rank, "structure": "stacked"})
    assert isinstance(inter.cross, LowRankCrossNet) and inter.deep is None
    _randomise(inter, 0)
    gen = torch.Generator().manual_seed(5)
    dense, sparse = torch.randn(4, Dd, generator=gen), torch.randn(4, F, Dd, generator=gen)
    out = inter(dense, sparse)
    x0 = torch.cat([dense, sparse.flatten(1)], 1)  # (N, (F+1)·D)
    assert inter.out_dim == (F + 1) * Dd == out.shape[1]
    x = x0
    for layer in range(2):
        W, V, b = inter.cross.W_kernels[layer], inter.cross.V_kernels[layer], inter.cross.bias[layer]
        assert W.shape == ((F + 1) * Dd, rank) and V.shape == (rank, (F + 1) * Dd)
        x = x0 * ((W @ (V @ x.T)).T + b) + x  # x_{l+1} = x0 ⊙ (W (V x_l) + b) + x_l
    torch.testing.assert_close(out, x.detach())
    # one layer alone, written out per coordinate for the first row
    one = Interaction("dcn", num_sparse=F, dim=Dd, dcn={"layers": 1, "rank": rank})
    _randomise(one, 1)
    W, V, b = (t.detach().numpy().astype(np.float64) for t in (one.cross.W_kernels[0], one.cross.V_kernels[0],
                                                                one.cross.bias[0]))
    x0 = x0[0].numpy().astype(np.float64)
    want = [x0[i] * (sum(W[i, r] * sum(V[r, j] * x0[j] for j in range(len(x0))) for r in range(rank)) + b[i]) + x0[i]
            for i in range(len(x0))]
    np.testing.assert_allclose(one(dense[:1], sparse[:1]).detach().numpy()[0], want, rtol=1e-5, atol=1e-6)


def test_full_rank_dcn_and_parallel_structure_by_hand():
    F, Dd = 2, 3
    inter = Interaction("dcn", num_sparse=F, dim=Dd, dcn={"layers": 1, "rank": None, "structure": "parallel",
                                                          "deep": [5, 4]})
    assert isinstance(inter.cross, CrossNet) and inter.deep is not None
    _randomise(inter, 2)
    gen = torch.Generator().manual_seed(6)
    dense, sparse = torch.randn(4, Dd, generator=gen), torch.randn(4, F, Dd, generator=gen)
    out = inter(dense, sparse)
    x0 = torch.cat([dense, sparse.flatten(1)], 1)
    K, b = inter.cross.kernels[0], inter.cross.bias[0].reshape(-1)  # bias is stored (N, 1)
    assert K.shape == (9, 9)
    crossed = x0 * (x0 @ K.T + b) + x0  # x1 = x0 ⊙ (K x0 + b) + x0
    assert inter.out_dim == 9 + 4 == out.shape[1]
    torch.testing.assert_close(out[:, :9], crossed.detach())
    torch.testing.assert_close(out[:, 9:], inter.deep(x0).detach())  # the deep MLP sees the same flat input
    assert out[:, 9:].abs().sum() > 0


def test_every_table_has_embedding_dim_whatever_the_schema_says():
    assert {SCHEMA[n].dim for n in TABLES} == {8, 4, 2, 16, 3}  # the schema's own dims differ
    model = DLRM(SCHEMA, NUM_EMB, P, embedding_dim=5, backend="torch")
    bags = model.sparse_arch.embedding.ebc.embedding_bags
    assert {n: tuple(bags[n].weight.shape) for n in TABLES} == {n: (NUM_EMB[n], 5) for n in TABLES}
    assert {f.dim for f in SCHEMA.with_dim(5).features} == {5}
    assert model.sparse_arch.num_features == 6  # user_id, gender, hist, hour, item_id, genres


def test_unknown_interaction_is_one_clear_error():
    with pytest.raises(RecfunnelError, match=r"model\.net\.interaction='mlp' is not valid; choose one of: dot, cat, dcn"):
        make_model("mlp")


def test_unknown_dcn_structure_is_one_clear_error():
    with pytest.raises(RecfunnelError, match=r"model\.net\.dcn\.structure='serial' is not valid; choose one of: "
                                             r"stacked, parallel"):
        make_model("dcn", {"structure": "serial"})


def test_wrong_pair_dense_mean_shape_is_one_clear_error():
    with pytest.raises(RecfunnelError, match=r"pair dense mean has shape \(2,\); expected \(3,\)"):
        make_model(dense_stats={"pair": (np.zeros(2), np.ones(2))})


def test_wrong_pair_dense_std_shape_is_one_clear_error():
    with pytest.raises(RecfunnelError, match=r"pair dense std has shape \(1,\); expected \(3,\)"):
        make_model(dense_stats={"pair": (np.zeros(3), np.ones(1))})


def test_non_positive_dcn_rank_is_one_clear_error():
    with pytest.raises(RecfunnelError, match=r"model\.net\.dcn\.rank"):
        make_model("dcn", {"rank": 0})


def test_pair_and_tower_dense_stats_normalise_the_inputs():
    """Pair stats standardise the pair features: shifting the raw features by the mean gives the same logits."""
    mean, std = np.array([1.0, -2.0, 0.5]), np.array([2.0, 0.5, 3.0])
    plain, normed = make_model(seed=7).eval(), make_model(seed=7, dense_stats={"pair": (mean, std)}).eval()
    raw = random_raw(2, 3, seed=8)
    shifted = {**raw, "pair": (raw["pair"] * std + mean).astype(np.float32)}
    with torch.no_grad():
        torch.testing.assert_close(normed(to_batch(shifted)), plain(to_batch(raw)), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(plain(to_batch(shifted)), plain(to_batch(raw)))


@pytest.mark.parametrize("interaction, dcn", [CONFIGS[0], CONFIGS[3]], ids=["dot", "dcn-lowrank"])
def test_torch_and_torchrec_backends_give_the_same_logits(interaction, dcn):
    pytest.importorskip("fbgemm_gpu")
    a = make_model(interaction, dcn, backend="torch", seed=0).eval()
    b = make_model(interaction, dcn, backend="torchrec", seed=1).eval()
    assert type(a.sparse_arch.embedding.ebc).__name__ == "TorchEmbeddingBagCollection"
    assert type(b.sparse_arch.embedding.ebc).__name__ == "EmbeddingBagCollection"
    raw = random_raw(4, 5, seed=9)  # query 0 has an empty history bag
    with torch.no_grad():
        assert not torch.allclose(a(to_batch(raw)), b(to_batch(raw)))  # different weights so far
        b.load_state_dict(a.state_dict(), strict=True)
        torch.testing.assert_close(b(to_batch(raw)), a(to_batch(raw)), rtol=1e-5, atol=1e-6)
        a2 = make_model(interaction, dcn, backend="torch", seed=2).eval()
        a2.load_state_dict(b.state_dict(), strict=True)  # and back
        torch.testing.assert_close(a2(to_batch(raw)), a(to_batch(raw)), rtol=1e-5, atol=1e-6)


def test_ranking_losses_by_hand():
    """``bce`` over the real pairs, ``softmax`` of each event's positive (column 0) against its real
    negatives, ``bce+softmax`` their sum; an unknown loss is one line naming the key."""
    import torch.nn.functional as F

    from recfunnel.tasks.ranking import RankingTask

    B, C = 4, 5
    batch = to_batch(random_raw(B, C, seed=3))
    batch["cand_idx"] = torch.zeros(B, C, dtype=torch.long)
    mask = torch.ones(B, C, dtype=torch.bool)
    mask[1, 3:] = mask[2, 1] = False
    label = torch.zeros(B, C)
    label[:, 0] = 1.0
    batch.update(mask=mask, label=label[..., None])  # (B, C, T=1): engagement alone
    losses = {}
    for loss in RankingTask.LOSSES:
        task = RankingTask(lambda **_: make_model(seed=0), schema=SCHEMA, num_embeddings=NUM_EMB, num_pair_dense=P,
                           loss=loss)
        losses[loss] = task.eval().compute_loss(batch)  # eval: no dropout, the same logits for every loss
    logits = make_model(seed=0).eval()(batch).detach()
    bce = sum(F.binary_cross_entropy_with_logits(logits[b, c], label[b, c]) for b in range(B) for c in range(C)
              if mask[b, c]) / mask.sum()
    softmax = sum(-logits[b, 0] + torch.logsumexp(logits[b][mask[b]], 0) for b in range(B)) / B
    torch.testing.assert_close(losses["bce"], bce)
    torch.testing.assert_close(losses["softmax"], softmax)
    torch.testing.assert_close(losses["bce+softmax"], bce + softmax)
    with pytest.raises(RecfunnelError, match="model.loss='hinge'"):
        RankingTask(lambda **_: make_model(), schema=SCHEMA, num_embeddings=NUM_EMB, num_pair_dense=P, loss="hinge")


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_drops_share_p_rescales_and_is_off_in_eval(p):
    from recfunnel.models.mlp import Dropout

    drop = Dropout(p)
    x = torch.ones(512, 257, requires_grad=True)  # an odd element count: the last 64-bit draw is cut
    torch.manual_seed(0)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 0.01
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient passes the kept elements, scaled alike
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # same seed, same mask
    drop.eval()
    assert drop(x) is x
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x)) and Dropout(0.0)(x) is x


# -- target attention (DIN-style) ------------------------------------------------------------------
ATTEND = {"history": "hist", "item": "item_id", "max_len": 4}


def test_target_attention_by_hand_and_without_history():
    from recfunnel.models.dlrm import TargetAttention

    torch.manual_seed(0)
    att = TargetAttention(3)
    torch.nn.init.normal_(att.query.weight)
    history = torch.randn(2, 4, 3)
    mask = torch.tensor([[False, True, True, True], [False] * 4])
    history[~mask] = 0  # padding rows are zero vectors, as FeatureEmbedding.sequence gives them
    cands = torch.randn(2 * 5, 3)
    out = att(history, mask, cands)
    assert out.shape == (10, 3)
    q = cands[:5] @ att.query.weight.T
    w = torch.softmax(q @ history[0, 1:].T / 3 ** 0.5, dim=1)
    torch.testing.assert_close(out[:5], w @ history[0, 1:])
    assert (out[5:] == 0).all()  # no history: nothing attended


def test_target_attention_adds_a_candidate_dependent_read_of_the_history():
    model = make_model("dcn", {"layers": 2, "rank": 3, "structure": "stacked"}, target_attention=ATTEND)
    assert model.sparse_arch.num_features == make_model("dcn", {"layers": 2, "rank": 3}).sparse_arch.num_features + 1
    raw = random_raw(4, 5, seed=4)  # histories of 0 and 4 items
    logits = model(to_batch(raw))
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert model.sparse_arch.attend.query.weight.grad.abs().sum() > 0
    # the attended history differs by candidate: same user, same history, two different items
    model.eval()
    batch = to_batch(raw)
    with torch.no_grad():
        q = model.sparse_arch.embedding.pooled({"item": batch["cand"]})["item_id"]
        hist, mask = model.sparse_arch.embedding.sequence("hist", batch["user"].sparse, 4)
        read = model.sparse_arch.attend(hist, mask, q).view(4, 5, -1)
    with_history = [b for b, row in enumerate(raw["queries"]) if len(row["hist"]) > 1]
    assert with_history and any(not torch.allclose(read[b, 0], read[b, j]) for b in with_history for j in range(1, 5))
    assert (read[[b for b, row in enumerate(raw["queries"]) if not row["hist"]]] == 0).all()


@pytest.mark.parametrize("attend, message", [
    ({"history": "gender", "item": "item_id"}, "target_attention.history='gender' must be a sequence"),
    ({"history": "hist", "item": "pop"}, "target_attention.item='pop' must be a sparse feature of the item"),
    ({"history": "hist", "item": "item_id", "max_len": 0}, "target_attention.max_len=0 must be a positive"),
])
def test_target_attention_settings_that_cannot_work_are_one_clear_error(attend, message):
    with pytest.raises(RecfunnelError, match=message):
        make_model("dot", None, target_attention=attend)


def test_target_attention_reaches_the_ranker_from_the_command_line():
    import hydra
    from hydra import compose, initialize_config_dir

    from helpers import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("funnel", overrides=["experiment=ml100k_funnel",
                                           "model.net.target_attention={history:hist,item:item_id,max_len:4}"])
    net = hydra.utils.instantiate(cfg.model.net)(schema=SCHEMA, num_embeddings=NUM_EMB, num_pair_dense=P)
    assert net.sparse_arch.attend is not None and net.sparse_arch.attend_len == 4
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("funnel", overrides=["experiment=ml100k_funnel"])
    assert hydra.utils.instantiate(cfg.model.net)(schema=SCHEMA, num_embeddings=NUM_EMB,
                                                   num_pair_dense=P).sparse_arch.attend is None
