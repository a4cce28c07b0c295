import numpy as np
import pytest

from curation.dedup import exact_keep_mask, near_keep_mask
from polymath.text import normalize_text


def unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def greedy_reference(X, threshold):
    """Keep a point unless it is above ``threshold`` to an earlier kept point (plain loops)."""
    kept = []
    for i in range(len(X)):
        if all(float(X[i] @ X[j]) <= threshold for j in kept):
            kept.append(i)
    mask = np.zeros(len(X), dtype=bool)
    mask[kept] = True
    return mask


def test_normalize_text_folds_case_unicode_and_whitespace():
    assert normalize_text("  What is\t2 +\n2?  ") == "what is 2 + 2?"
    assert normalize_text("ＡＢＣ") == "abc"  # full-width letters fold under NFKC
    assert normalize_text("Straße") == normalize_text("STRASSE")


def test_exact_keep_mask_keeps_first_occurrence():
    texts = ["Add 2 and 3", "add  2 and 3", "Add 3 and 2", "ADD 2 AND 3 ", "Add 3 and 2"]
    assert exact_keep_mask(texts).tolist() == [True, False, True, False, False]


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.95])
@pytest.mark.parametrize("block", [3, 7, 2048])
def test_near_keep_matches_greedy_reference(threshold, block):
    rng = np.random.default_rng(1)
    base = rng.standard_normal((12, 8))
    # each base point plus a few noisy copies, shuffled so twins are far apart in input order
    X = unit(np.concatenate([base] + [base + s * rng.standard_normal(base.shape) for s in (0.05, 0.2, 0.6)]))
    X = X[rng.permutation(len(X))]
    got = near_keep_mask(X, threshold, block=block)
    np.testing.assert_array_equal(got, greedy_reference(X, threshold))
    kept = X[got]
    sims = kept @ kept.T
    assert (sims[np.triu_indices(len(kept), 1)] <= threshold).all()


def test_near_keep_threshold_one_keeps_everything():
    X = unit(np.ones((5, 4)))
    assert near_keep_mask(X, 1.0).all()


def test_partitioned_near_keep_finds_the_same_twins():
    rng = np.random.default_rng(2)
    centers = unit(rng.standard_normal((40, 16)))
    X = unit(np.concatenate([centers, centers + 0.01 * rng.standard_normal(centers.shape)]))
    exact = near_keep_mask(X, 0.95)
    approx = near_keep_mask(X, 0.95, exact_limit=10, partition_size=20, seed=0)
    np.testing.assert_array_equal(exact, approx)
    assert exact.sum() == 40
