"""How the next token is chosen from the logits: greedy, or sampled at a temperature among the top k and
the top p of the probability (nucleus), in the order transformers applies them; seeded. It works on
PyTorch tensors wherever the logits are, whichever backend computed them.
"""

from dataclasses import dataclass

import torch

from errors import UserError


class NonFiniteLogits(UserError, ValueError):
    """The model computed NaN or infinite logits: its weights are broken. One line, for the user."""


@dataclass(frozen=True)
class Sampling:
    """The sampling options, as one value."""

    temperature: float = 0.8  # 0 means greedy
    top_k: int = 5
    top_p: float = 1.0  # keep the likeliest tokens whose probabilities add up to top_p; 1 means off


def sample(logits, sampling, generator):
    """The next token of each row from the last position's logits (batch, tokens, vocab): greedy for
    temperature 0, else sampled after temperature, then top-k, then top-p. The row's maximum is taken off
    before dividing by the temperature (softmax does not change), so a tiny temperature cannot overflow."""
    logits = logits[:, -1, :]
    if sampling.temperature == 0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    logits = logits.float()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / sampling.temperature
    v, _ = torch.topk(logits, min(sampling.top_k, logits.size(-1)))
    logits[logits < v[:, [-1]]] = -float("Inf")
    if sampling.top_p < 1.0:
        logits = keep_top_p(logits, sampling.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def keep_top_p(logits, top_p):
    """The logits with every token set to -inf whose likelier tokens already hold top_p of the probability:
    what remains is the smallest set of likeliest tokens that holds at least top_p (never empty)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop = mass_before >= top_p
    drop[:, 0] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), -float("Inf"))


def check_finite(logits, position):
    """Raises NonFiniteLogits if any of the logits (samples, 1, vocab) for `position` is NaN or infinite.
    One pass over logits already read."""
    if not torch.isfinite(logits).all():
        sample_index, _, token = (~torch.isfinite(logits)).nonzero()[0].tolist()
        kind = "nan" if torch.isnan(logits).any() else "inf"
        raise NonFiniteLogits(
            f"the model's logits are not finite ({kind}) at position {position} (sample {sample_index + 1}, "
            f"token id {token}): the checkpoint's weights are broken"
        )


def seeded_generator(seed, device="cpu"):
    """A torch.Generator on `device` (where the logits are), seeded with `seed`, or randomly for None."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
