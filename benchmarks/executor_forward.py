"""How fast the CPU executor runs GPT-2, next to transformers on the same CPU.

Builds a GPT-2-124M-shaped checkpoint with random weights, loads it into model.GPT (fp32, batch 1),
compiles it with tp.compile (sequence dimension 1..seq_len) and times one forward of `--seq-len`
tokens through the executor and through transformers' GPT2LMHeadModel. Prints the compile (trace)
time and the median forward times with their ratio. Not a test: run it and read the numbers.

    python benchmarks/executor_forward.py [--seq-len 64] [--repeats 20]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import backend  # noqa: E402


def median_seconds(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    backend.select_backend("cpu")
    import nvtripy as tp
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import make_tiny_checkpoint
    import weight_loader
    from checkpoint import open_checkpoint

    torch.manual_seed(0)
    hf_model = GPT2LMHeadModel(GPT2Config()).eval()
    tokens = torch.randint(0, hf_model.config.vocab_size, (1, args.seq_len))

    with tempfile.TemporaryDirectory() as checkpoint:
        hf_model.save_pretrained(checkpoint)
        make_tiny_checkpoint.write_tokenizer(checkpoint)
        model = weight_loader.load_model(open_checkpoint(checkpoint), tp.float32)

    start = time.perf_counter()
    compiled = tp.compile(model, args=[tp.InputInfo((1, (1, args.seq_len, args.seq_len)), dtype=tp.int32)])
    compile_s = time.perf_counter() - start

    tp_tokens = tp.copy(tp.Tensor(tokens.to(torch.int32)), tp.device("gpu"))
    tripy_s = median_seconds(lambda: torch.from_dlpack(compiled(tp_tokens)), args.repeats)
    with torch.no_grad():
        hf_s = median_seconds(lambda: hf_model(tokens).logits, args.repeats)
        max_diff = (torch.from_dlpack(compiled(tp_tokens)) - hf_model(tokens).logits).abs().max().item()

    print(f"GPT-2 124M shape, fp32, batch 1, sequence {args.seq_len}, torch threads {torch.get_num_threads()}")
    print(f"tp.compile (trace + build)     {compile_s:8.2f} s")
    print(f"forward, CPU executor          {tripy_s * 1e3:8.1f} ms")
    print(f"forward, transformers          {hf_s * 1e3:8.1f} ms")
    print(f"executor / transformers        {tripy_s / hf_s:8.2f}x")
    print(f"max |logit difference|         {max_diff:8.2e}")


if __name__ == "__main__":
    main()
