"""sampling.py: greedy, top-k at a temperature, and a seeded generator."""

import torch

from sampling import Sampling, sample, seeded_generator


def test_top_k_1_is_greedy():
    logits = torch.randn(1, 3, 50)
    for seed in range(5):
        token = sample(logits.clone(), Sampling(temperature=1.3, top_k=1), torch.Generator().manual_seed(seed))
        assert token.item() == logits[0, -1].argmax().item()


def test_temperature_0_is_greedy():
    logits = torch.randn(2, 1, 50)
    assert (
        sample(logits, Sampling(temperature=0.0, top_k=50), torch.Generator()).flatten().tolist()
        == logits[:, -1].argmax(-1).tolist()
    )


def test_top_k_samples_only_among_the_k_likeliest():
    logits = torch.randn(1, 1, 50, generator=torch.Generator().manual_seed(0))
    allowed = set(logits[0, -1].topk(3).indices.tolist())
    generator = seeded_generator(0)
    drawn = {sample(logits.clone(), Sampling(temperature=5.0, top_k=3), generator).item() for _ in range(200)}
    assert drawn == allowed  # a high temperature reaches all three, and nothing else


def test_the_seed_decides_the_samples():
    logits = torch.zeros(1, 1, 1000)
    draw = lambda seed: sample(logits.clone(), Sampling(1.0, 1000), seeded_generator(seed)).item()
    assert draw(3) == draw(3)
    assert [draw(seed) for seed in range(5)] != [draw(0)] * 5


def test_a_tiny_top_p_is_greedy():
    logits = torch.randn(3, 1, 40, generator=torch.Generator().manual_seed(1))
    generator = seeded_generator(0)
    for _ in range(20):
        tokens = sample(logits.clone(), Sampling(temperature=2.0, top_k=40, top_p=1e-6), generator)
        assert tokens.flatten().tolist() == logits[:, -1].argmax(-1).tolist()


def test_top_p_1_is_top_k_alone_under_the_same_seed():
    logits = torch.randn(2, 1, 100, generator=torch.Generator().manual_seed(2))

    def draws(sampling):
        generator = seeded_generator(7)
        return [sample(logits.clone(), sampling, generator).flatten().tolist() for _ in range(30)]

    assert draws(Sampling(1.0, 20, top_p=1.0)) == draws(Sampling(1.0, 20))


def test_top_p_samples_the_renormalized_nucleus():
    """On a vocabulary of 8, sampled frequencies match the nucleus's probabilities renormalized: a chi-square
    test with 2 degrees of freedom, whose p-value is exp(-statistic / 2)."""
    import math

    probs = torch.tensor([0.30, 0.25, 0.15, 0.12, 0.08, 0.05, 0.03, 0.02])
    logits = probs.log()[torch.randperm(8, generator=torch.Generator().manual_seed(3))][None, None, :]
    # top_p 0.6: 0.30 and 0.25 hold 0.55 < 0.6, so 0.15 joins; the rest hold none of it.
    nucleus = torch.zeros(8)
    order = logits[0, 0].argsort(descending=True)
    nucleus[order[:3]] = torch.tensor([0.30, 0.25, 0.15]) / 0.70
    n = 20000
    draws = sample(logits.expand(n, 1, 8).clone(), Sampling(temperature=1.0, top_k=8, top_p=0.6), seeded_generator(0))
    counts = torch.bincount(draws.flatten(), minlength=8)
    assert counts[order[3:]].sum() == 0  # nothing outside the nucleus
    observed, expected = counts[order[:3]].double(), n * nucleus[order[:3]].double()
    statistic = ((observed - expected) ** 2 / expected).sum().item()
    assert math.exp(-statistic / 2) > 0.001, (observed, expected)
    # the test can fail: the same draws against the nucleus left unnormalized within the top 4 do
    wrong = n * torch.tensor([0.30, 0.25, 0.15, 0.12], dtype=torch.double) / 0.82
    assert ((counts[order[:4]].double() - wrong) ** 2 / wrong).sum().item() > 100


def test_top_p_follows_temperature_and_top_k_as_transformers_does():
    """transformers' warpers in its order (temperature, top-k, top-p) keep the same tokens as keep_top_p."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from sampling import keep_top_p

    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(4)) * 3
    for temperature, top_k, top_p in [(0.7, 50, 0.9), (1.3, 300, 0.5), (1.0, 10, 0.99)]:
        theirs = logits.clone()
        for warper in (TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k), TopPLogitsWarper(top_p)):
            theirs = warper(None, theirs)
        ours = logits / temperature
        ours = ours.masked_fill(ours < ours.topk(top_k).values[:, [-1]], -float("inf"))
        ours = keep_top_p(ours, top_p)
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs))


def test_non_finite_logits_are_named():
    import pytest

    from sampling import NonFiniteLogits, check_finite

    logits = torch.zeros(2, 1, 10)
    check_finite(logits, 4)
    logits[1, 0, 7] = float("nan")
    with pytest.raises(NonFiniteLogits, match=r"not finite \(nan\) at position 4 \(sample 2, token id 7\)"):
        check_finite(logits, 4)
    logits[1, 0, 7] = float("inf")
    with pytest.raises(NonFiniteLogits, match=r"\(inf\)"):
        check_finite(logits, 4)
