"""How the next token is chosen from the logits: greedy, or top-k sampling at a temperature, seeded.

Kept apart from generate.py, which imports nvtripy, so that the command line can hold its sampling
options before the backend is chosen.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """The sampling options, as one value."""

    temperature: float = 0.8  # 0 means greedy
    top_k: int = 5


def sample(logits, sampling, generator):
    """The next token from the last position's logits: greedy for temperature 0, else top-k sampling."""
    logits = logits[:, -1, :]
    if sampling.temperature == 0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    logits = logits / sampling.temperature
    v, _ = torch.topk(logits, min(sampling.top_k, logits.size(-1)))
    logits[logits < v[:, [-1]]] = -float("Inf")
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def seeded_generator(seed, device="cpu"):
    """A torch.Generator on `device` (where the logits are), seeded with `seed`, or randomly for None."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
