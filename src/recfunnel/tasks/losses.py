"""Sampled-softmax loss for two-tower retrieval: in-batch negatives, optional extra uniform
negatives (mixed negative sampling, Yang et al. 2020), logQ correction (Yi et al. 2019), accidental-
hit masking, fixed or learned temperature, label smoothing and per-example weights.

For row b (user u_b, positive item v_b) the candidates are the B in-batch items followed by the N
extra items, c_1 … c_{B+N}. With temperature τ and log q_j the candidate's log expected count (below):

    z_bj = u_b · c_j / τ − log q_j                  (logQ correction; the positive j = b too)
    z_bj = −∞  where c_j is the same item as v_b and j ≠ b   (accidental hit, not a negative)
    ℓ_b  = −(1 − ε) log softmax(z_b)_b − ε · mean over unmasked j of log softmax(z_b)_j
    loss = Σ_b w_b ℓ_b / Σ_b w_b                    (w_b = 1 without weights)

**log q convention.** ``log q_j`` is the log of the *expected number of copies* of item j in one
row's candidate set under the sampling that produced it — the quantity for which sampled softmax is
a consistent estimate of the full softmax. For in-batch candidates with training frequency p_j that
is B·p_j (≈ the probability that j is in the batch when B·p_j ≪ 1); for N uniform extra negatives
over I items it is N/I; when both sources are used, each copy of j from either source should get
log(B·p_j + N/I). A constant shared by *all* candidates cancels in the softmax, so only the relative
scale matters — which is why in-batch and extra candidates must use the same convention.
``exact_log_q`` builds this table from training counts; ``StreamingFrequencyEstimator`` estimates
B·p_j online. Subtracting log q pushes frequently sampled (popular) candidates down during training,
which undoes their over-penalisation as negatives; the learned scores then estimate the true
log-preference. (TFRS issue #219 was this sign, flipped.)

**Who samples.** This module never samples. The training task draws ``num_uniform_negatives``
items uniformly from the catalogue (with replacement), embeds them and passes them as
``extra_item`` / ``extra_item_ids`` / ``extra_log_q``; the module only checks the count.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from recfunnel.utils.errors import RecfunnelError

TEMPERATURE_RANGE = (0.01, 1.0)  # bounds of a learned temperature


def exact_log_q(item_counts: Tensor, batch_size: int, num_uniform_negatives: int = 0) -> Tensor:
    """log expected copies of each item in one row's candidate set, from exact training counts.

    Args:
        item_counts: (I,) number of training examples whose positive is each item (any
            non-negative scale: counts or frequencies).
        batch_size: B, the number of in-batch candidates per row.
        num_uniform_negatives: N, extra negatives drawn uniformly over the I items per batch.
    Returns:
        (I,) float32 ``log(B · count_j / Σ count + N / I)``. Index it with the batch's item ids for
        ``log_q`` and with the extra ids for ``extra_log_q``. An item with count 0 gets the smallest
        positive count, only to keep the value finite (it never appears in a batch).

    The ``log B`` term shifts every in-batch candidate alike and would cancel in the softmax on its
    own; it is there so that in-batch and uniform candidates share one scale.
    """
    freq = item_counts.to(torch.float64) / item_counts.sum()
    freq = torch.where(freq > 0, freq, freq[freq > 0].min())
    expected = batch_size * freq + num_uniform_negatives / freq.numel()
    return expected.log().to(torch.float32)


class SampledSoftmaxLoss(nn.Module):
    """The loss of the module docstring; ``forward`` returns a scalar.

    Args:
        temperature: τ; with ``learn_temperature`` its starting value, which must lie within
            ``TEMPERATURE_RANGE``.
        learn_temperature: learn τ as a parameter ``log_temperature`` (log τ). Each forward
            first projects it into log ``TEMPERATURE_RANGE`` in place (projected gradient
            descent, as CLIP does with its logit scale), so τ never leaves the range and the
            gradient is never cut off: a bound that the loss pushes against is simply held, and
            τ leaves it as soon as the gradient turns.
        logq_correction: subtract ``log_q`` / ``extra_log_q`` from the logits.
        remove_accidental_hits: mask candidates that are the row's own positive item (other than
            the row's own diagonal entry).
        num_uniform_negatives: N, how many uniform extra negatives the task must draw and pass as
            ``extra_item``; 0 for in-batch only. ``forward`` rejects any other count.
        label_smoothing: ε, mass spread uniformly over the row's unmasked candidates.
    """

    def __init__(self, temperature: float = 0.05, learn_temperature: bool = False,
                 logq_correction: bool = True, remove_accidental_hits: bool = True,
                 num_uniform_negatives: int = 0, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise RecfunnelError(f"model.loss.label_smoothing={label_smoothing} is out of range; use a value in [0, 1)")
        if num_uniform_negatives < 0:
            raise RecfunnelError(f"model.loss.num_uniform_negatives={num_uniform_negatives} is out of range; use 0 or more")
        self.logq_correction = logq_correction
        self.remove_accidental_hits = remove_accidental_hits
        self.num_uniform_negatives = int(num_uniform_negatives)
        self.label_smoothing = float(label_smoothing)
        self.learn_temperature = learn_temperature
        if learn_temperature:
            lo, hi = TEMPERATURE_RANGE
            if not lo <= temperature <= hi:
                raise RecfunnelError(f"model.loss.temperature={temperature}: a learned temperature must start inside "
                                     f"{list(TEMPERATURE_RANGE)}; choose a value in that range")
            self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        else:
            if temperature <= 0:
                raise RecfunnelError(f"model.loss.temperature={temperature} is out of range; use a value > 0 "
                                     "(e.g. 0.05)")
            self._fixed_temperature = float(temperature)

    def _temperature(self) -> Tensor | float:
        """τ: a 0-d tensor carrying the gradient when learned (after the projection), else the
        fixed float."""
        if not self.learn_temperature:
            return self._fixed_temperature
        with torch.no_grad():
            self.log_temperature.clamp_(*(math.log(t) for t in TEMPERATURE_RANGE))
        return self.log_temperature.exp()

    @property
    def temperature(self) -> float:
        """The current temperature as a plain float (projected into range when learned)."""
        if not self.learn_temperature:
            return self._fixed_temperature
        lo, hi = TEMPERATURE_RANGE
        return min(max(math.exp(self.log_temperature.item()), lo), hi)

    def forward(self, user: Tensor, item: Tensor, item_ids: Tensor, log_q: Tensor | None = None,
                extra_item: Tensor | None = None, extra_item_ids: Tensor | None = None,
                extra_log_q: Tensor | None = None, weight: Tensor | None = None) -> Tensor:
        """Mean sampled-softmax loss of a batch.

        Args:
            user: (B, D) user vectors.
            item: (B, D) positive item vectors; row b's positive is item b.
            item_ids: (B,) catalogue index of each positive (accidental-hit masking).
            log_q: (B,) log expected copies of each in-batch item (module docstring); required
                with ``logq_correction``.
            extra_item: (N, D) extra negatives, N == ``num_uniform_negatives``.
            extra_item_ids: (N,) their catalogue indices; required with ``remove_accidental_hits``.
            extra_log_q: (N,) or () (one value for a uniform sampler) their log expected copies;
                required with ``logq_correction``.
            weight: (B,) non-negative per-example weights; the result is Σ w ℓ / Σ w.
        Returns:
            0-d float32 tensor.
        """
        batch = user.shape[0]
        if item.shape != user.shape or item_ids.shape != (batch,):
            raise ValueError(f"need user (B, D), item (B, D), item_ids (B,); got {tuple(user.shape)}, "
                             f"{tuple(item.shape)}, {tuple(item_ids.shape)}")
        num_extra = 0 if extra_item is None else extra_item.shape[0]
        if num_extra != self.num_uniform_negatives:
            raise ValueError(f"expected {self.num_uniform_negatives} extra negatives "
                             f"(num_uniform_negatives), got {num_extra}")
        candidates = item if extra_item is None else torch.cat([item, extra_item])
        logits = (user @ candidates.T).float() / self._temperature()  # (B, B+N)

        if self.logq_correction:
            if log_q is None or (num_extra and extra_log_q is None):
                raise ValueError("logq_correction needs log_q (and extra_log_q with extra_item)")
            corrections = [log_q.reshape(batch)]
            if num_extra:
                corrections.append(extra_log_q.float().expand(num_extra))
            logits = logits - torch.cat(corrections).float()

        hit = None  # (B, B+N) True where a candidate is masked
        if self.remove_accidental_hits:
            candidate_ids = item_ids
            if num_extra:
                if extra_item_ids is None:
                    raise ValueError("remove_accidental_hits needs extra_item_ids with extra_item")
                candidate_ids = torch.cat([item_ids, extra_item_ids.reshape(num_extra)])
            hit = item_ids.unsqueeze(1) == candidate_ids.unsqueeze(0)
            hit.diagonal().fill_(False)
            logits = logits.masked_fill(hit, float("-inf"))

        log_probs = logits.log_softmax(dim=1)
        per_row = -log_probs.diagonal()
        if self.label_smoothing > 0:
            if hit is None:
                spread = -log_probs.mean(dim=1)
            else:
                spread = -log_probs.masked_fill(hit, 0.0).sum(dim=1) / (~hit).sum(dim=1)
            per_row = (1.0 - self.label_smoothing) * per_row + self.label_smoothing * spread
        if weight is None:
            return per_row.mean()
        weight = weight.reshape(batch).float()
        return (weight * per_row).sum() / weight.sum()


class StreamingFrequencyEstimator(nn.Module):
    """Online estimate of how many copies of each item a training batch holds (Yi et al. 2019,
    Algorithm 2), for ``log_q`` when exact counts are unavailable or drift.

    Item ids are dense indices below ``num_items``, so the paper's hash arrays become two buffers:
    ``last_step`` (A: the step an item was last seen, −1 for never) and ``delta`` (B: an
    exponential moving average, rate ``alpha``, of the number of steps between consecutive
    occurrences). The estimate is 1 / delta copies per batch, i.e. B·p_j of ``exact_log_q``.

    Unlike the paper, an item occurring k times in one batch counts as k occurrences: one with the
    gap since its last step, then k − 1 with gap 0. The mean gap per occurrence is then exactly
    1 / (expected copies per batch), so popular items with several copies per batch are not
    truncated to one (the paper's 1/delta saturates at 1 for them). For k = 1 this is the paper's
    update. An item's first occurrence initialises delta from its gap since step −1.
    Call ``update`` with the batch's positives (all ranks' if the loss sees an all-gathered batch),
    then ``log_q``. Steps must not decrease; this is not checked, to avoid a device sync per step.
    """

    def __init__(self, num_items: int, alpha: float = 0.01):
        super().__init__()
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.alpha = alpha
        self.register_buffer("last_step", torch.full((num_items,), -1, dtype=torch.long))
        self.register_buffer("delta", torch.zeros(num_items, dtype=torch.float64))
        self.register_buffer("step", torch.tensor(-1, dtype=torch.long))

    @torch.no_grad()
    def update(self, item_ids: Tensor, step: int) -> None:
        """Record one batch. item_ids: (B,) positives of the batch; step: global step, >= 0."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        ids, counts = torch.unique(item_ids.reshape(-1), return_counts=True)
        last = self.last_step[ids]
        gap = (step - last).to(torch.float64)
        keep = (1.0 - self.alpha) ** (counts - 1).to(torch.float64)  # the k − 1 zero-gap updates
        updated = (1.0 - self.alpha) * self.delta[ids] + self.alpha * gap
        self.delta[ids] = keep * torch.where(last < 0, gap, updated)
        self.last_step[ids] = step
        self.step.fill_(step)

    def log_q(self, item_ids: Tensor, num_uniform_negatives: int = 0) -> Tensor:
        """log expected copies of each item in one row's candidate set.

        Args:
            item_ids: (M,) catalogue indices.
            num_uniform_negatives: N; adds N / num_items for the uniform extra negatives, as in
                ``exact_log_q``.
        Returns:
            (M,) float32 ``log(1 / delta + N / I)``. An item never seen counts as one occurrence
            over all steps so far.
        """
        delta = self.delta[item_ids]
        unseen = torch.clamp(self.step + 1, min=1).to(delta.dtype)
        delta = torch.where(self.last_step[item_ids] < 0, unseen, delta)
        expected = 1.0 / delta + num_uniform_negatives / self.delta.numel()
        return expected.log().to(torch.float32)
