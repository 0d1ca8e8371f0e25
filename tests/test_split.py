"""The protocol split: sizes on ML-100K and the (timestamp, source position) tie-break."""

import numpy as np
import pandas as pd

from recfunnel.data.split import TEST, TRAIN, VALID, leave_last_out, split_sizes


def test_ml100k_split_sizes(ml100k_data):
    assert split_sizes(ml100k_data.split) == {"train": 98_114, "valid": 943, "test": 943}


def test_ties_broken_by_source_position():
    # user 1: three events at the same last second; the one latest in the file is test.
    inter = pd.DataFrame({"user_id": [1, 1, 1, 1, 2, 2, 2],
                          "item_id": [10, 11, 12, 13, 10, 11, 12],
                          "ts": [5, 9, 9, 9, 1, 3, 2], "rating": [1.0] * 7})
    split = leave_last_out(inter)
    assert split.tolist() == [TRAIN, TRAIN, VALID, TEST, TRAIN, TEST, VALID]


def test_short_users_stay_in_train():
    inter = pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "ts": [1, 2], "rating": [1.0, 1.0]})
    assert (leave_last_out(inter) == TRAIN).all()


def test_valid_and_test_are_each_users_last_events(ml100k_data):
    d = ml100k_data
    order = d.order
    last = np.r_[d.user_idx[order][1:] != d.user_idx[order][:-1], True]
    assert (d.split[order][last] == TEST).all()
    assert (d.split[order][np.r_[last[1:], False]] == VALID).all()
