"""Eq. 6 (unordered recall) against hand counts, per target token and per distinct item."""
import numpy as np

from pinrec_model.metrics import distinct_recall, unordered_recall


def _index():
    # five index items on the unit circle's axes in 3-d: scores are easy to count by hand
    return np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, -1, 0]], np.float32)


def test_a_target_counts_when_some_embedding_ranks_it_in_the_top_k():
    idx = _index()
    gen = np.array([[[1, 0, 0], [0, 1, 0]]], np.float32)  # two embeddings, one user
    # targets: item 0 (top-1 of embedding 0), item 2 (never above rank 2), item 1 (top-1 of embedding 1)
    targets = [np.array([0, 2, 1])]
    rec, hits = unordered_recall(gen, targets, idx, [idx[t] for t in targets], k=1)
    assert hits[0].tolist() == [True, False, True]
    assert rec[0] == 2 / 3


def test_distinct_recall_counts_a_repeated_item_once():
    idx = _index()
    gen = np.array([[[1, 0, 0]]], np.float32)
    targets = [np.array([0, 0, 0, 2]), np.zeros(0, np.int64)]  # item 0 three times, item 2 once
    gen = np.concatenate([gen, gen])
    rec, hits = unordered_recall(gen, targets, idx, [idx[t] for t in targets], k=1)
    assert rec[0] == 3 / 4 and np.isnan(rec[1])  # per token: the repeats weigh three times
    d = distinct_recall(targets, hits)
    assert d[0] == 1 / 2 and np.isnan(d[1])  # per item: item 0 once, item 2 once
