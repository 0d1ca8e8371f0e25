"""SparseAdamW: AdamW for dense gradients, the lazy row-wise update for sparse ones."""

import copy

import pytest
import torch
import torch.nn.functional as F

from recfunnel.tasks.optim import SparseAdamW, clip_gradients
from recfunnel.utils.errors import RecfunnelError


def _model(seed: int = 0) -> tuple[torch.nn.Parameter, torch.nn.Linear]:
    torch.manual_seed(seed)
    return torch.nn.Parameter(torch.randn(20, 4)), torch.nn.Linear(4, 1)


def _loss(table, head, rows, sparse: bool):
    return head(F.embedding(rows, table, sparse=sparse)).square().mean()


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_equals_adamw_when_every_row_is_touched_each_step(weight_decay):
    table_a, head_a = _model()
    table_b, head_b = copy.deepcopy(table_a), copy.deepcopy(head_a)
    dense = torch.optim.AdamW([table_a, *head_a.parameters()], lr=0.05, weight_decay=weight_decay)
    lazy = SparseAdamW([table_b, *head_b.parameters()], lr=0.05, weight_decay=weight_decay)
    for step in range(5):
        rows = torch.randperm(20, generator=torch.Generator().manual_seed(step)).repeat(2)  # all rows, duplicated
        for table, head, opt, sparse in ((table_a, head_a, dense, False), (table_b, head_b, lazy, True)):
            opt.zero_grad()
            _loss(table, head, rows, sparse).backward()
            opt.step()
    assert table_b.grad.is_sparse
    torch.testing.assert_close(table_b, table_a, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(head_b.weight, head_a.weight, atol=1e-6, rtol=1e-5)


def test_untouched_rows_and_their_moments_do_not_move():
    table, head = _model()
    opt = SparseAdamW([table, *head.parameters()], lr=0.05, weight_decay=0.1)
    before = table.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        _loss(table, head, torch.tensor([1, 3, 3]), sparse=True).backward()
        opt.step()
    moved = (table.detach() != before).any(1)
    assert moved.nonzero().flatten().tolist() == [1, 3]
    assert (opt.state[table]["exp_avg"][moved.logical_not()] == 0).all()
    assert float(opt.state[table]["step"]) == 3


def test_state_dict_round_trip_continues_exactly():
    table, head = _model()
    opt = SparseAdamW([table, *head.parameters()], lr=0.05)

    def steps(t, h, o, n, start):
        for i in range(start, start + n):
            o.zero_grad()
            _loss(t, h, torch.tensor([i % 20, (3 * i) % 20]), sparse=True).backward()
            o.step()

    steps(table, head, opt, 3, 0)
    saved_params = (table.detach().clone(), copy.deepcopy(head.state_dict()))
    saved_opt = copy.deepcopy(opt.state_dict())
    steps(table, head, opt, 3, 3)

    table2, head2 = _model(seed=1)
    with torch.no_grad():
        table2.copy_(saved_params[0])
    head2.load_state_dict(saved_params[1])
    opt2 = SparseAdamW([table2, *head2.parameters()], lr=0.05)
    opt2.load_state_dict(saved_opt)
    steps(table2, head2, opt2, 3, 3)
    torch.testing.assert_close(table2, table, atol=0, rtol=0)


def test_a_table_with_sparse_then_dense_gradients_keeps_one_state():
    table, head = _model()
    opt = SparseAdamW([table, *head.parameters()], lr=0.05)
    for sparse in (True, False, True):
        opt.zero_grad()
        _loss(table, head, torch.tensor([0, 5]), sparse=sparse).backward()
        opt.step()
    assert float(opt.state[table]["step"]) == 3 and torch.isfinite(table).all()


def test_amsgrad_is_refused_for_sparse_gradients():
    table, head = _model()
    opt = SparseAdamW([table, *head.parameters()], lr=0.05, amsgrad=True)
    _loss(table, head, torch.tensor([0]), sparse=True).backward()
    with pytest.raises(RecfunnelError, match="amsgrad"):
        opt.step()


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_clipping_sparse_gradients_equals_clipping_their_dense_form(algorithm):
    table_a, head_a = _model()
    table_b, head_b = copy.deepcopy(table_a), copy.deepcopy(head_a)
    rows = torch.tensor([1, 3, 3, 7])
    _loss(table_a, head_a, rows, sparse=False).mul(50).backward()
    _loss(table_b, head_b, rows, sparse=True).mul(50).backward()
    dense_params, mixed_params = [table_a, *head_a.parameters()], [table_b, *head_b.parameters()]
    before = torch.cat([p.grad.flatten() for p in dense_params])
    assert before.norm() > 0.5 and before.abs().max() > 0.01  # so both algorithms do clip
    if algorithm == "norm":
        torch.nn.utils.clip_grad_norm_(dense_params, 0.5)
    else:
        torch.nn.utils.clip_grad_value_(dense_params, 0.01)
    clip_gradients(mixed_params, 0.5 if algorithm == "norm" else 0.01, algorithm)
    assert table_b.grad.is_sparse
    for a, b in zip(dense_params, mixed_params):
        torch.testing.assert_close(b.grad.to_dense(), a.grad, atol=1e-6, rtol=1e-5)


def test_coalesce_rows_equals_torch_coalesce():
    from recfunnel.tasks.optim import coalesce_rows
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(0, 50, (400,), generator=gen)  # many duplicates, unsorted
    values = torch.randn(400, 3, generator=gen)
    grad = torch.sparse_coo_tensor(index[None], values, (60, 3))
    rows, summed = coalesce_rows(grad)
    want = grad.coalesce()
    assert torch.equal(rows, want.indices()[0]) and torch.allclose(summed, want.values(), atol=1e-6)
    done = coalesce_rows(want)  # an already coalesced gradient is returned as it is
    assert torch.equal(done[0], want.indices()[0]) and torch.equal(done[1], want.values())
