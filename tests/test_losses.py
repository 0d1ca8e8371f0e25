"""Maths of the sampled-softmax loss family: hand computations, and the logQ correction's effect.

Hand computations are in float64 with Python loops over plain lists, independent of the module's
tensor code. The logQ tests fit free per-(user, item) scores on a toy corpus with a skewed item
distribution and compare what is learned with the known true log-preferences.
"""

from __future__ import annotations

import math

import pytest
import torch

from recfunnel.tasks.losses import TEMPERATURE_RANGE, SampledSoftmaxLoss, StreamingFrequencyEstimator, exact_log_q


def _hand_loss(user, cands, cand_ids, pos_ids, tau, lq=None, mask=False, eps=0.0, weight=None):
    """Row b: candidates are ``cands`` (its own positive at column b), logits dot/τ − lq."""
    user, cands = user.tolist(), cands.tolist()
    losses = []
    for b, u in enumerate(user):
        cols = [j for j in range(len(cands)) if not (mask and j != b and cand_ids[j] == pos_ids[b])]
        z = {j: sum(a * c for a, c in zip(u, cands[j])) / tau - (lq[j] if lq else 0.0) for j in cols}
        log_norm = math.log(sum(math.exp(v) for v in z.values()))
        nll = log_norm - z[b]
        smooth = sum(log_norm - v for v in z.values()) / len(cols)
        losses.append((1 - eps) * nll + eps * smooth)
    w = [1.0] * len(losses) if weight is None else weight
    return sum(wi * li for wi, li in zip(w, losses)) / sum(w)


def _vectors(b, n=0, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, d, generator=g, dtype=torch.float64),
            torch.randn(b, d, generator=g, dtype=torch.float64),
            torch.randn(n, d, generator=g, dtype=torch.float64))


def test_plain_loss_is_cross_entropy_of_scaled_dot_products():
    user, item, _ = _vectors(6)
    ids = torch.arange(6)
    fn = SampledSoftmaxLoss(temperature=0.3, logq_correction=False, remove_accidental_hits=False)
    expected = _hand_loss(user, item, ids.tolist(), ids.tolist(), 0.3)
    assert fn(user, item, ids).item() == pytest.approx(expected, rel=1e-6)


def test_weights_and_label_smoothing_match_hand_computation():
    user, item, _ = _vectors(5, seed=1)
    ids = torch.tensor([4, 2, 4, 0, 1])
    weight = [0.5, 2.0, 1.0, 0.0, 3.0]
    fn = SampledSoftmaxLoss(temperature=0.5, logq_correction=False, label_smoothing=0.2)
    expected = _hand_loss(user, item, ids.tolist(), ids.tolist(), 0.5, mask=True, eps=0.2,
                          weight=weight)
    got = fn(user, item, ids, weight=torch.tensor(weight))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_accidental_hits_are_masked_and_masking_lowers_the_loss():
    user, item, _ = _vectors(6, seed=2)
    ids = torch.tensor([3, 7, 3, 1, 7, 3])  # rows 0, 2, 5 share item 3; rows 1, 4 share item 7
    masked = SampledSoftmaxLoss(temperature=0.2, logq_correction=False)
    unmasked = SampledSoftmaxLoss(temperature=0.2, logq_correction=False,
                                  remove_accidental_hits=False)
    expected = _hand_loss(user, item, ids.tolist(), ids.tolist(), 0.2, mask=True)
    assert masked(user, item, ids).item() == pytest.approx(expected, rel=1e-6)
    # Row 3 (item 1, unique) has nothing to mask; only the rows with duplicates change.
    assert expected != pytest.approx(_hand_loss(user, item, ids.tolist(), ids.tolist(), 0.2))
    assert unmasked(user, item, ids).item() > masked(user, item, ids).item() + 1e-3


def test_extra_negatives_with_logq_and_accidental_hits_match_hand_computation():
    user, item, extra = _vectors(4, n=3, seed=3)
    ids = torch.tensor([10, 11, 12, 11])
    extra_ids = torch.tensor([12, 5, 11])  # 12 is row 2's positive, 11 rows 1 and 3's
    log_q = torch.tensor([0.3, -1.2, 0.8, -1.2], dtype=torch.float64)
    extra_log_q = torch.tensor([-0.4, 0.1, 0.6], dtype=torch.float64)
    fn = SampledSoftmaxLoss(temperature=0.7, num_uniform_negatives=3)
    got = fn(user, item, ids, log_q=log_q, extra_item=extra, extra_item_ids=extra_ids,
             extra_log_q=extra_log_q)
    expected = _hand_loss(user, torch.cat([item, extra]), ids.tolist() + extra_ids.tolist(),
                          ids.tolist(), 0.7, lq=log_q.tolist() + extra_log_q.tolist(), mask=True)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # A uniform sampler's single extra_log_q value broadcasts over the extra negatives.
    same = torch.tensor(-0.4, dtype=torch.float64)
    got = fn(user, item, ids, log_q=log_q, extra_item=extra, extra_item_ids=extra_ids,
             extra_log_q=same)
    expected = _hand_loss(user, torch.cat([item, extra]), ids.tolist() + extra_ids.tolist(),
                          ids.tolist(), 0.7, lq=log_q.tolist() + [-0.4] * 3, mask=True)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_missing_inputs_are_rejected():
    user, item, extra = _vectors(3, n=2)
    ids = torch.arange(3)
    with pytest.raises(ValueError, match="log_q"):
        SampledSoftmaxLoss()(user, item, ids)
    with pytest.raises(ValueError, match="num_uniform_negatives"):
        SampledSoftmaxLoss(logq_correction=False, num_uniform_negatives=2)(user, item, ids)
    with pytest.raises(ValueError, match="extra_item_ids"):
        SampledSoftmaxLoss(logq_correction=False, num_uniform_negatives=2)(
            user, item, ids, extra_item=extra)


def test_learned_temperature_gets_a_gradient_and_stays_in_range():
    fixed = SampledSoftmaxLoss(temperature=0.07)
    assert list(fixed.parameters()) == [] and fixed.temperature == 0.07

    fn = SampledSoftmaxLoss(temperature=0.07, learn_temperature=True, logq_correction=False)
    (param,) = fn.parameters()
    assert fn.temperature == pytest.approx(0.07, rel=1e-5)
    user, item, _ = _vectors(8, seed=4)
    fn(user.float(), item.float(), torch.arange(8)).backward()
    assert param.grad is not None and param.grad.abs().item() > 0
    # Drive τ hard towards each bound: it stops there, and leaves as soon as the gradient turns.
    lo, hi = TEMPERATURE_RANGE
    for direction, bound in ((1.0, lo), (-1.0, hi), (1.0, lo)):
        for _ in range(3):
            (grad,) = torch.autograd.grad(direction * fn._temperature(), param)
            assert grad.abs().item() > 0
            with torch.no_grad():
                param -= 100.0 * grad
            assert lo <= fn.temperature <= hi
        assert fn.temperature == pytest.approx(bound)


def _fit_scores(sign, steps=200, batch=128, extra=0, users=4, items=20, seed=0):
    """Fit free scores W[u, j] by in-batch sampled softmax on a toy corpus; return centred
    (learned, true, log q) per user, each (users, items) float64.

    True log-preferences: Zipf popularity plus per-user noise; examples (u, j) draw u uniformly
    and j from softmax(true[u]), so in-batch candidates follow the marginal q_j (very skewed).
    ``sign`` multiplies the logQ correction (0: none, 1: correct, −1: flipped). ``extra`` uniform
    negatives are added with the mixture correction of ``exact_log_q``.
    """
    g = torch.Generator().manual_seed(seed)
    popularity = torch.arange(1, items + 1, dtype=torch.float64) ** -1.0
    true = popularity.log() + torch.randn(users, items, generator=g, dtype=torch.float64)
    p = true.softmax(1)
    q = p.mean(0)
    u = torch.randint(users, (steps, batch), generator=g)
    pos = torch.multinomial(p[u.flatten()], 1, generator=g).view(steps, batch)
    neg = torch.randint(items, (steps, extra), generator=g)
    table = sign * exact_log_q(q, batch, extra)
    fn = SampledSoftmaxLoss(temperature=1.0, logq_correction=sign != 0, num_uniform_negatives=extra)
    w = torch.zeros(users, items, requires_grad=True)
    onehot = torch.eye(users)
    for s in range(steps):  # plain SGD, linearly decayed learning rate
        kw = {"log_q": table[pos[s]]} if sign else {}
        if extra:
            kw.update(extra_item=w.T[neg[s]], extra_item_ids=neg[s], extra_log_q=table[neg[s]])
        (grad,) = torch.autograd.grad(fn(onehot[u[s]], w.T[pos[s]], pos[s], **kw), w)
        with torch.no_grad():
            w -= 30.0 * (1 - s / steps) * grad

    def centre(x):
        return x - x.mean(1, keepdim=True)

    return centre(w.detach().double()), centre(true), centre(q.log().expand(users, items))


def _summary(learned, true, log_q):
    """Pearson r(learned, true); mean |error|; slope of the error regressed on log q."""
    r = torch.corrcoef(torch.stack([learned.flatten(), true.flatten()]))[0, 1].item()
    err = learned - true
    slope = ((err * log_q).sum() / (log_q * log_q).sum()).item()
    return r, err.abs().mean().item(), slope


def test_logq_correction_recovers_true_preferences_and_its_sign_matters():
    torch.set_num_threads(1)
    r0, mae0, slope0 = _summary(*_fit_scores(sign=0))
    r1, mae1, slope1 = _summary(*_fit_scores(sign=1))
    r2, mae2, slope2 = _summary(*_fit_scores(sign=-1))
    # Corrected: the learned scores are the true log-preferences up to a per-user constant.
    assert r1 > 0.97 and mae1 < 0.2 and abs(slope1) < 0.15
    # Uncorrected: popular items are over-penalised as negatives; the scores learn
    # log P(j|u) − log q_j (error slope −1 on log q), biased against popular items.
    assert r0 < 0.85 and mae0 > 3 * mae1 and -1.2 < slope0 < -0.8
    # Flipped sign (logits + log q, TFRS #219): twice the bias, worse than no correction.
    assert r2 < r0 and mae2 > mae0 and -2.2 < slope2 < -1.8


def test_logq_with_mixed_uniform_negatives_recovers_true_preferences():
    torch.set_num_threads(1)
    r, mae, slope = _summary(*_fit_scores(sign=1, extra=32))
    assert r > 0.97 and mae < 0.2 and abs(slope) < 0.15


def test_exact_log_q_is_log_expected_copies_per_row():
    counts = torch.tensor([6, 3, 1, 0])
    got = exact_log_q(counts, batch_size=20, num_uniform_negatives=8)
    expected = [math.log(20 * c / 10 + 8 / 4) for c in (6, 3, 1, 1)]  # count 0 → smallest, 1
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_streaming_estimator_converges_to_expected_copies_per_batch():
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    items, batch, steps = 50, 32, 1000
    q = torch.arange(1, items + 1, dtype=torch.float64) ** -1.0
    q /= q.sum()
    stream = torch.multinomial(q, steps * batch, replacement=True, generator=g).view(steps, batch)
    est = StreamingFrequencyEstimator(items, alpha=0.01)
    for step in range(steps):
        est.update(stream[step], step)
    ids = torch.arange(items)
    estimate = est.log_q(ids).exp().double()
    truth = exact_log_q(q, batch).exp().double()  # B · q_j copies per batch
    frequent = truth > 0.5  # the 14 head items; the head one has about 7 copies per batch
    assert ((estimate / truth - 1).abs()[frequent] < 0.2).all()
    assert estimate[0] > 5  # several copies per batch are counted, not truncated to one
    with_uniform = est.log_q(ids, num_uniform_negatives=10).exp().double()
    assert (with_uniform - estimate).tolist() == pytest.approx([10 / items] * items, rel=1e-4)
