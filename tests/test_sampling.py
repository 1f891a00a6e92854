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
    assert sample(logits, Sampling(temperature=0.0, top_k=50), torch.Generator()).flatten().tolist() == logits[:, -1].argmax(-1).tolist()


def test_top_k_samples_only_among_the_k_likeliest():
    logits = torch.randn(1, 1, 50, generator=torch.Generator().manual_seed(0))
    allowed = set(logits[0, -1].topk(3).indices.tolist())
    generator = seeded_generator(0)
    drawn = {sample(logits.clone(), Sampling(temperature=5.0, top_k=3), generator).item() for _ in range(200)}
    assert drawn == allowed  # a high temperature reaches all three, and nothing else


def test_the_seed_decides_the_samples():
    logits = torch.zeros(1, 1, 1000)
    draw = lambda seed: [sample(logits.clone(), Sampling(1.0, 1000), seeded_generator(seed)).item() for _ in range(1)]
    assert draw(3) == draw(3)
    assert [draw(seed) for seed in range(5)] != [draw(0)] * 5
