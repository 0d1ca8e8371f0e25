"""The DataModule yields per-tower KJTs and dense tensors, with worker processes too."""

import hydra
import numpy as np
import torch
from omegaconf import OmegaConf

from recfunnel.data.datamodule import RecDataModule

from helpers import DATA_DIR, ROOT


def make_dm(num_workers):
    """The DataModule built from the data config's ``_target_``, as a run builds it."""
    data_cfg = OmegaConf.load(ROOT / "configs/data/ml100k.yaml")
    data_cfg.source.cache_dir = str(DATA_DIR)
    dm = hydra.utils.instantiate(data_cfg, _recursive_=False, features=OmegaConf.load(ROOT / "configs/features/ml100k.yaml"),
                                 data_dir=str(DATA_DIR), batch_size=256, num_workers=num_workers)
    assert isinstance(dm, RecDataModule)
    dm.setup()
    return dm


def take(loader, n):
    out = []
    for i, b in enumerate(loader):
        if i == n:
            break
        out.append(b)
    return out


def test_batches_same_with_and_without_workers(ml100k_data):
    torch.manual_seed(0)
    a = take(make_dm(0).train_dataloader(), 3)
    torch.manual_seed(0)
    b = take(make_dm(2).train_dataloader(), 3)
    for x, y in zip(a, b):
        assert torch.equal(x["rows"], y["rows"])
        assert x["user"].sparse.keys() == ["user_id", "age", "gender", "occupation", "zip_prefix",
                                           "hist_items", "hist_age", "session_items"]
        assert torch.equal(x["user"].sparse.values(), y["user"].sparse.values())
        assert torch.equal(x["item"].dense, y["item"].dense)
        assert x["item"].sparse.stride() == 256 and x["user"].dense.shape == (256, 1)


def test_eval_loader_covers_every_user_once(ml100k_data):
    dm = make_dm(0)
    pos = torch.cat([b["eval_pos"] for b in dm.val_dataloader()])
    assert sorted(pos.tolist()) == list(range(943))
    assert dm.catalogue().sparse.stride() == 1682
    stats = dm.dense_stats()
    assert np.all(stats["item"][1] > 0)


def test_an_evaluation_pass_does_not_draw_from_the_global_generator():
    # dropout draws from torch's global generator: how many evaluation passes a job runs (e.g. one
    # skipped because a checkpoint carries its validation) must not change what it trains next
    from recfunnel.data.loaders import evaluation_loader

    class Positions(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, key):
            return torch.as_tensor(key)

    torch.manual_seed(0)
    before = torch.get_rng_state()
    batches = list(evaluation_loader(Positions(), 4))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert torch.equal(torch.get_rng_state(), before)
