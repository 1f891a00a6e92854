"""How long one decode step takes on the CPU executor, next to transformers with its own KV cache.

For a GPT-2-124M-shaped checkpoint with random weights (GPT2Config() defaults), for each dtype and
batch size: prefill a random prompt of --cache tokens, then time --steps decode steps, each feeding
one token per sample and the cache the step before returned (so the cache grows from --cache to
--cache + --steps tokens), through
  - ours: generate.compile_decode's function, with the token ids made on the device and the logits
    read through DLPack, as generate.decode_one_token does;
  - transformers: GPT2LMHeadModel(token, cache=DynamicCache, use_cache=True), what generate() runs
    each step, without its sampling.
Ours and transformers take turns, round by round, so that a change in the machine's load hits both;
a step's time is the median over all rounds' steps. tokens/s counts every sample of the batch.
On a machine with more runnable processes than cores, --clock cpu times the process's CPU time
instead of the wall clock, leaving out the time it waits for a core (not the time it waits for memory).
It prints the machine's load average before and after, and the ratios the issue's targets are about.
Not a test: run it, read it.

    python benchmarks/decode_step.py [--threads 1] [--batches 1 8] [--dtypes float32 bfloat16] [--clock wall]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import backend  # noqa: E402

DTYPES = ("float32", "bfloat16")


def load_average():
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" (1, 5, 15 min; {os.cpu_count()} CPUs)"


class Ours:
    """Our compiled prefill and decode for one dtype and batch size."""

    def __init__(self, checkpoint, dtype, batch):
        import nvtripy as tp

        import generate
        import weight_loader
        from checkpoint import open_checkpoint

        self.tp = tp
        model = weight_loader.load_model(open_checkpoint(checkpoint), getattr(tp, dtype))
        self.prefill, self.decode = generate.compile_prefill(model, batch), generate.compile_decode(model, batch)

    def start(self, prompt):
        import torch

        logits, *self.cache = self.prefill(
            self.tp.Tensor(prompt.to(torch.int32).tolist(), device=self.tp.device("gpu"))
        )
        return torch.from_dlpack(logits)

    def step(self, tokens):
        import torch

        logits, *self.cache = self.decode(self.tp.Tensor(tokens.tolist(), device=self.tp.device("gpu")), self.cache)
        return torch.from_dlpack(logits)


class Transformers:
    """transformers' GPT2LMHeadModel with a DynamicCache, as generate() calls it for each step."""

    def __init__(self, hf_model):
        import inspect

        self.model = hf_model
        params = inspect.signature(hf_model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5

    def start(self, prompt):
        import torch
        from transformers import DynamicCache

        with torch.no_grad():
            self.cache = DynamicCache()
            out = self.model(prompt.long(), use_cache=True, **{self.cache_arg: self.cache})
        return out.logits[:, -1:, :]

    def step(self, tokens):
        import torch

        with torch.no_grad():
            return self.model(tokens.long(), use_cache=True, **{self.cache_arg: self.cache}).logits


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed_round(runner, prompt, tokens, clock=time.perf_counter):
    """Prefills, then times each decode step; returns the step times in seconds and the first step's logits."""
    runner.start(prompt)
    times, first = [], None
    for step_tokens in tokens:
        start = clock()
        logits = runner.step(step_tokens)
        times.append(clock() - start)
        if first is None:
            first = logits.float()
    return times, first


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtypes", choices=DTYPES, nargs="+", default=list(DTYPES))
    parser.add_argument("--cache", type=int, default=64, help="tokens in the cache before the first timed step")
    parser.add_argument("--steps", type=int, default=16, help="timed decode steps a round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds each of ours and transformers, taking turns")
    parser.add_argument(
        "--clock", choices=CLOCKS, default="wall", help="wall time, or the process's CPU time (default: %(default)s)"
    )
    args = parser.parse_args()

    backend.select_backend("cpu")
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import make_tiny_checkpoint

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"load average before: {load_average()}")
    print(
        f"GPT2Config() shape, random weights; cache {args.cache} -> {args.cache + args.steps} tokens; "
        f"median of {args.steps} steps x {args.rounds} rounds; {args.clock} clock"
    )

    torch.manual_seed(0)
    hf_fp32 = GPT2LMHeadModel(GPT2Config()).eval()
    vocab = hf_fp32.config.vocab_size
    results = {}
    header = (
        f"{'dtype':>8} {'batch':>5} | {'ours ms':>8} {'hf ms':>8} | {'ours tok/s':>10} {'hf tok/s':>9} | "
        f"{'ours/hf':>7} | {'max|dlogit|':>11}"
    )
    with tempfile.TemporaryDirectory() as checkpoint:
        hf_fp32.save_pretrained(checkpoint)
        make_tiny_checkpoint.write_tokenizer(checkpoint)  # token ids are made directly; this avoids a download
        print()
        print(header)
        for dtype in args.dtypes:
            torch_dtype = getattr(torch, dtype)
            theirs = Transformers(GPT2LMHeadModel.from_pretrained(checkpoint, dtype=torch_dtype).eval())
            for batch in args.batches:
                ours = Ours(checkpoint, dtype, batch)
                prompt = torch.randint(0, vocab, (batch, args.cache), dtype=torch.int32)
                tokens = [torch.randint(0, vocab, (batch, 1), dtype=torch.int32) for _ in range(args.steps)]
                timed_round(ours, prompt, tokens[:3])  # warm-up
                timed_round(theirs, prompt, tokens[:3])
                our_times, hf_times = [], []
                clock = CLOCKS[args.clock]
                for _ in range(args.rounds):
                    times, our_logits = timed_round(ours, prompt, tokens, clock)
                    our_times += times
                    times, hf_logits = timed_round(theirs, prompt, tokens, clock)
                    hf_times += times
                ours_s, hf_s = statistics.median(our_times), statistics.median(hf_times)
                results[dtype, batch] = batch / ours_s, batch / hf_s
                diff = (our_logits - hf_logits).abs().max().item()
                print(
                    f"{dtype:>8} {batch:>5} | {1e3 * ours_s:>8.2f} {1e3 * hf_s:>8.2f} | {batch / ours_s:>10.1f} "
                    f"{batch / hf_s:>9.1f} | {hf_s / ours_s:>6.2f}x | {diff:>11.2e}"
                )
                del ours

    print()
    print("ours / transformers is the speed ratio (tokens/s over tokens/s): above 1 is faster than transformers.")
    batches = sorted(args.batches)
    for dtype in args.dtypes:
        for batch in batches[1:]:
            if (dtype, batches[0]) in results:
                print(
                    f"ours {dtype} batch {batch} / batch {batches[0]} tokens/s: "
                    f"{results[dtype, batch][0] / results[dtype, batches[0]][0]:.2f}x"
                )
    for batch in batches:
        if ("bfloat16", batch) in results and ("float32", batch) in results:
            print(
                f"ours batch {batch} bfloat16 / float32 tokens/s: "
                f"{results['bfloat16', batch][0] / results['float32', batch][0]:.2f}x"
            )
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
