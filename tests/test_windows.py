"""Window batches: one causal pass per window gives each window's last event exactly the history
encoding the per-event pass (used for evaluation) computes."""

import numpy as np
import pytest
import torch

from recfunnel.data.datamodule import WindowBatches
from recfunnel.tasks.build import build_datamodule, build_task
from test_train import compose_cfg


@pytest.mark.parametrize("encoder", ["attention", "recency", "recency+attention"])
def test_window_pass_matches_per_event_pass_at_window_ends(tmp_path, ml100k_data, encoder):
    cfg = compose_cfg(tmp_path, "data.train_windows=8", "data.batch_size=64", f"model.net.history_encoder={encoder}")
    dm = build_datamodule(cfg)
    task = build_task(cfg.model, dm).eval()
    ds = WindowBatches(dm.store, dm.data.split == 0, 8, 50)
    starts = np.flatnonzero(ds.win_start == ds.user_start)[:4]  # includes events with no history at all
    batch = ds[list(range(12)) + list(starts)]
    per_event = {k: v for k, v in batch.items() if k != "window"}
    with torch.no_grad():
        windowed, direct = task.net.user_vectors(batch), task.net.user_vectors(per_event)
    q = batch["window"]["query_index"]
    last = torch.zeros(len(q), dtype=torch.bool)
    last[np.r_[np.cumsum(ds.win_end[list(range(12)) + list(starts)] - ds.win_start[list(range(12)) + list(starts)]) - 1]] = True
    assert last.sum() == 16
    torch.testing.assert_close(windowed[last], direct[last], atol=1e-6, rtol=0)
    no_history = q == q.max()  # the padding row's last position
    assert no_history.any()
    torch.testing.assert_close(windowed[no_history], direct[no_history], atol=1e-6, rtol=0)
    assert not torch.allclose(windowed[~last & ~no_history], direct[~last & ~no_history])  # shorter prefixes


def test_windows_longer_than_history_are_refused(tmp_path, ml100k_data):
    from recfunnel.utils.errors import RecfunnelError

    cfg = compose_cfg(tmp_path)
    dm = build_datamodule(cfg)
    with pytest.raises(RecfunnelError, match="data.train_windows=64 exceeds the history length 50"):
        WindowBatches(dm.store, dm.data.split == 0, 64, 50)


def test_the_transformer_experiment_trains_windows_of_50_under_the_exact_softmax(tmp_path, ml100k_data):
    import pytorch_lightning as pl

    cfg = compose_cfg(tmp_path, "experiment=ml100k_two_tower_transformer", "data.batch_size=256")
    assert cfg.data.train_windows == 50 and cfg.model.full_softmax and cfg.callbacks.early_stopping.patience == 10
    dm = build_datamodule(cfg)
    task = build_task(cfg.model, dm)
    assert type(task.net.encoder).__name__ == "AttentionEncoder" and task.full_softmax
    batch = next(iter(dm.train_dataloader()))
    assert batch["window"]["tokens"].shape[1] == 50  # windows of 50 events read 50 tokens each
    before = task.net.encoder.pos.detach().clone()
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(task, datamodule=dm)  # every step's loss is checked finite (BaseTask.guard_finite)
    assert trainer.global_step == 2
    assert not torch.equal(before, task.net.encoder.pos)  # the transformer's positions trained


def test_history_side_features_with_windows_are_refused_before_the_run_starts(tmp_path):
    from recfunnel.utils.config_checks import check_config
    from recfunnel.utils.errors import RecfunnelError

    for encoder in ("recency", "attention"):
        cfg = compose_cfg(tmp_path, "features=ml100k", f"model.net.history_encoder={encoder}",
                          "model.net.history_side=[hist_age]", "data.train_windows=8")
        with pytest.raises(RecfunnelError, match="history_side features .* cannot be used with window batches"):
            check_config(cfg)
    check_config(compose_cfg(tmp_path, "features=ml100k", "model.net.history_encoder=recency",
                             "model.net.history_side=[hist_age]"))  # per-event batches read them
