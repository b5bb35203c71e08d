"""The leakage alarm: exact on small splits (equal to the definition computed by brute
force), within its stated bound when sampled, and the same whatever pieces the text comes in."""

import random

import pytest

from nlsweep.data.overlap import ShingleHasher, shingle_overlap


def brute(train: str, val: str, k: int) -> float:
    seen = {train[i : i + k] for i in range(len(train) - k + 1)}
    shingles = [val[i : i + k] for i in range(len(val) - k + 1)]
    return sum(s in seen for s in shingles) / len(shingles)


def corpus(n: int, seed: int) -> str:
    """n words of a fixed 2,000-word vocabulary (some of it beyond ASCII), in seeded order."""
    letters = "abcdefghijklmnopqrstuvwxyzüé日本"
    vocab = random.Random(99)
    words = ["".join(vocab.choices(letters, k=vocab.randint(2, 7))) for _ in range(2000)]
    rng = random.Random(seed)
    return " ".join(rng.choice([*words, "\n"]) for _ in range(n))


@pytest.mark.parametrize("k", [1, 5, 32])
def test_exact_below_the_sample_size_is_the_definition(k):
    train, val = corpus(3000, 0), corpus(400, 1) + corpus(300, 0)[:900]
    est = shingle_overlap(train, val, k=k)
    assert est.exact and est.bound == 0
    assert est.value == pytest.approx(brute(train, val, k), abs=1e-12)


def test_any_split_into_pieces_equals_one_pass():
    train, val = corpus(4000, 2), corpus(1500, 2)[:3000] + corpus(500, 3)
    one = shingle_overlap(train, val)
    rng = random.Random(0)
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, len(train)), 7))
        pieces = [train[a:b] for a, b in zip([0, *cuts], [*cuts, len(train)])]
        vcut = rng.randrange(1, len(val))
        assert shingle_overlap(pieces, [val[:vcut], "", val[vcut:]]) == one


def test_hashes_of_pieces_are_the_hashes_of_the_whole():
    text = corpus(500, 4)
    whole = ShingleHasher(8).update(text)
    h = ShingleHasher(8)
    parts = [h.update(text[:3]), h.update(text[3:100]), h.update(text[100:])]
    assert (whole == __import__("numpy").concatenate(parts)).all()


def test_a_sampled_estimate_is_within_its_bound_of_the_exact_value():
    """Half the held-out text is copied from training: the exact overlap is far from 0 and
    1, and each seed's sampled estimate (about 2,000 of 60,000 positions) lands within its
    stated bound."""
    train = corpus(20000, 5)
    val = corpus(6000, 6)[:30000] + train[5000:35000]
    exact = shingle_overlap(train, val, k=16)
    assert exact.exact and 0.3 < exact.value < 0.7
    misses = 0
    for seed in range(20):
        est = shingle_overlap(train, val, k=16, sample=2000, seed=seed)
        assert not est.exact and 1500 < est.sampled < 2600
        misses += abs(est.value - exact.value) > est.bound
    assert misses <= 1  # a 99.7% interval: 20 seeds miss it rarely


def test_a_stream_of_unknown_length_is_sampled_uniformly_within_the_bound():
    """Without a hint the rate starts at 1 and halves as the sample grows: exact while the
    sample stays under 2m, then within its bound, whatever pieces the text came in."""
    from nlsweep.data.overlap import OverlapSketch

    train = corpus(20000, 5)
    val = corpus(6000, 6)[:30000] + train[5000:35000]
    exact = shingle_overlap(train, val, k=16).value
    misses = 0
    for seed in range(20):
        sketch = OverlapSketch(None, sample=1000, seed=seed, k=16)
        for i in range(0, len(val), 997):
            sketch.add_heldout(val[i : i + 997])
        for i in range(0, len(train), 5000):
            sketch.add_training(train[i : i + 5000])
        est = sketch.estimate()
        assert not est.exact and 1000 <= est.sampled <= 2000
        misses += abs(est.value - exact) > est.bound
    assert misses <= 1
    small = OverlapSketch(None, sample=10**6, k=16)
    small.add_heldout(val)
    small.add_training(train)
    assert small.estimate().exact and small.estimate().value == exact
