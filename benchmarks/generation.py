"""How fast generation is with the KV cache, next to the recompute loop and to transformers' generate(),
and how throughput grows with the batch.

On one machine, in one run, for a GPT-2-124M-shaped checkpoint with random weights (GPT2Config()
defaults), greedy, from the same prompt:
  1. the KV cache (generate.py) against the recompute loop (example.py --no-kv-cache) at 16, 64 and
     256 new tokens;
  2. the time of one decode step at token 10 and at token 200 (median of the five steps around each):
     with the cache a step should cost about the same wherever it is;
  3. transformers' GPT2LMHeadModel.generate(), with its own KV cache, on the same device and dtype:
     decode tokens/s, counted the same way for both ((N - 1) new tokens after the first), the two
     taking turns run by run.
  4. a batch sweep (--part sweep): decode tokens/s of all samples at 1, 2, 4, 8 and 16 samples, ours
     next to transformers' generate() with the same batch, dtype and threads, in float32 and bfloat16;
  5. the peak memory of 16 samples x the full block (--part memory): the process's anonymous memory
     before and at its peak while generating, next to the KV cache's own size.
It prints ratios as well as times, with the machine's load before and after. Not a test: run it, read it.
Parts 1-3 use example.py's dtype: float16 with TensorRT, float32 on the CPU executor.

    python benchmarks/generation.py [--backend auto] [--threads N] [--prompt-tokens 8] [--part all]
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import backend  # noqa: E402

NEW_TOKENS = (16, 64, 256)
PER_TOKEN = (10, 200)
BATCHES = (1, 2, 4, 8, 16)
SWEEP_DTYPES = ("float32", "bfloat16")
SWEEP_NEW_TOKENS = 32


def load_average():
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" (1, 5, 15 min; {os.cpu_count()} CPUs)"


def timed_tokens(tokens, sync):
    """Runs a token generator; returns the perf_counter time at which each token was ready, and the start."""
    sync()
    start = time.perf_counter()
    times = []
    for _ in tokens:
        times.append(time.perf_counter())
    return start, times


def step_ms(runs, token):
    """Median time of the decode steps around new token `token` (1-based: token 1 comes from prefill),
    over every run: five steps a run, so that a burst of load on a busy machine counts for little."""
    steps = [times[i] - times[i - 1] for _, times in runs for i in range(token - 3, token + 2)]
    return 1e3 * statistics.median(steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=backend.CHOICES, default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of the KV-cache and transformers timings (medians are shown)"
    )
    parser.add_argument(
        "--part", choices=("all", "basics", "sweep", "memory"), default="all", help="what to run (default: all)"
    )
    parser.add_argument(
        "--sweep-dtypes", nargs="+", default=SWEEP_DTYPES, help="dtypes of the sweep and the memory part"
    )
    args = parser.parse_args()

    backend_name = backend.select_backend(args.backend).name
    import nvtripy as tp
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import make_tiny_checkpoint
    from checkpoint import open_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    on_gpu = backend_name == "tensorrt"
    device = "cuda" if on_gpu else "cpu"
    dtype, torch_dtype = (tp.float16, torch.float16) if on_gpu else (tp.float32, torch.float32)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    print(f"backend: {backend_name}, {dtype}, torch {torch.__version__} with {torch.get_num_threads()} CPU threads")
    print(f"load average before: {load_average()}")

    torch.manual_seed(0)
    hf_model = GPT2LMHeadModel(GPT2Config()).eval()
    hf_model.generation_config.eos_token_id = None  # all the tokens, as example.py makes them
    prompt = torch.randint(0, 50257, (args.prompt_tokens,)).tolist()
    with tempfile.TemporaryDirectory() as directory:
        hf_model.save_pretrained(directory)
        make_tiny_checkpoint.write_tokenizer(directory)  # the prompt is token ids already; this avoids a download
        checkpoint = open_checkpoint(directory)
        if args.part in ("all", "basics"):
            basics(args, checkpoint, hf_model, prompt, backend_name, dtype, torch_dtype, device, sync)
        if args.part in ("all", "sweep"):
            batch_sweep(args, checkpoint, hf_model, prompt, backend_name, device, sync)
        if args.part in ("all", "memory"):
            peak_memory(args, checkpoint, prompt, backend_name, device)
    print()
    print(f"load average after: {load_average()}")


def basics(args, checkpoint, hf_model, prompt, backend_name, dtype, torch_dtype, device, sync):
    """The KV cache against recomputing, a step early and late, and transformers' generate() at batch 1."""
    import torch

    import generate
    import speed_report
    from sampling import Sampling

    on_gpu = backend_name == "tensorrt"
    start = time.perf_counter()
    kv = generate.load_or_compile(checkpoint, dtype, None, backend_name, use_engine_cache=False)
    kv_compile_s = time.perf_counter() - start  # includes reading the weights
    recompute = generate.compile_without_cache(
        checkpoint, dtype, None, args.prompt_tokens, args.prompt_tokens + max(NEW_TOKENS)
    )
    recompute_compile_s = recompute.seconds
    weight_bytes = kv.weight_bytes
    hf_model = hf_model.to(device=device, dtype=torch_dtype)
    print(
        f"model: GPT2Config() shape, random weights, {weight_bytes / 1e9:.3f} GB; "
        f"prompt of {len(prompt)} tokens; greedy"
    )
    print(
        f"compile: prefill + decode {kv_compile_s:.2f} s (with loading the weights); "
        f"recompute model {recompute_compile_s:.2f} s"
    )
    greedy = Sampling(temperature=0.0, top_k=1)

    def cached(n):
        return generate.generate(kv, prompt, n, greedy, torch.Generator(device))

    def recomputed(n):
        return generate.generate_without_cache(recompute, prompt, n, greedy, torch.Generator(device))

    def hf(n):
        with torch.no_grad():
            idx = torch.tensor([prompt], device=device)
            yield from hf_model.generate(idx, do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)[
                0, len(prompt) :
            ]

    for fn in (cached, recomputed, hf):  # warm-up
        list(fn(4))

    print()
    print(f"{'new tokens':>10} | {'KV cache':>10} | {'recompute':>10} | recompute / KV cache (target >= 3x at 256)")
    runs = {}
    for n in NEW_TOKENS:
        kv_runs = [timed_tokens(cached(n), sync) for _ in range(args.repeats)]
        rc = timed_tokens(recomputed(n), sync)  # once: it is the slow one
        runs[n] = (kv_runs, [rc])
        kv_s, re_s = statistics.median(times[-1] - start for start, times in kv_runs), rc[1][-1] - rc[0]
        print(f"{n:>10} | {kv_s:>8.2f} s | {re_s:>8.2f} s | {re_s / kv_s:.2f}x")

    kv_runs, re_runs = runs[max(NEW_TOKENS)]
    a, b = PER_TOKEN
    print()
    print(f"one decode step: token {a} vs token {b}")
    kv_a, kv_b = step_ms(kv_runs, a), step_ms(kv_runs, b)
    re_a, re_b = step_ms(re_runs, a), step_ms(re_runs, b)
    print(
        f"  KV cache : {kv_a:8.2f} ms vs {kv_b:8.2f} ms: token {b} costs {kv_b / kv_a:.2f}x token {a} (target <= 1.3x)"
    )
    print(f"  recompute: {re_a:8.2f} ms vs {re_b:8.2f} ms: token {b} costs {re_b / re_a:.2f}x token {a}")
    n = max(NEW_TOKENS)

    print()
    # Ours and theirs take turns, so that a change in the machine's load hits both alike.
    ours_runs, hf_runs = [], []
    for _ in range(args.repeats):
        ours_runs.append(timed_tokens(cached(n), sync))
        one = timed_tokens(hf(1), sync)
        full = timed_tokens(hf(n), sync)
        hf_runs.append(((n - 1) / ((full[1][-1] - full[0]) - (one[1][-1] - one[0])), one[1][-1] - one[0]))
    ours_decode = statistics.median((n - 1) / (times[-1] - times[0]) for _, times in ours_runs)
    ours_ttft = statistics.median(times[0] - start for start, times in ours_runs)
    hf_decode = statistics.median(rate for rate, _ in hf_runs)
    hf_ttft = statistics.median(ttft for _, ttft in hf_runs)
    print(
        f"transformers generate() on {device} in {torch_dtype}, {n} new tokens, its KV cache; "
        f"medians of {args.repeats} runs:"
    )
    print(
        f"  decode tokens/s: ours {ours_decode:.2f}, transformers {hf_decode:.2f}: "
        f"ours / transformers = {ours_decode / hf_decode:.2f}"
        " (target >= 0.5 on the CPU executor)"
    )
    print(f"  time to first token: ours {1e3 * ours_ttft:.1f} ms, transformers {1e3 * hf_ttft:.1f} ms")
    print(f"  weight bandwidth (weights x decode tokens/s): ours {weight_bytes * ours_decode / 1e9:.2f} GB/s")
    if on_gpu:
        peak, how_found = speed_report.peak_memory_bandwidth()
        if peak:
            print(
                f"  = {100 * weight_bytes * ours_decode / peak:.1f}% of the GPU's peak "
                f"{peak / 1e12:.2f} TB/s ({how_found})"
            )


def batch_sweep(args, checkpoint, hf_model, prompt, backend_name, device, sync):
    """Decode tokens/s at each batch size, ours and transformers', the two taking turns run by run."""
    import nvtripy as tp
    import torch

    import generate
    from sampling import Sampling

    greedy, n = Sampling(temperature=0.0, top_k=1), SWEEP_NEW_TOKENS
    print()
    print(f"batch sweep: {n} new tokens a sample, greedy; decode tokens/s counts every sample's tokens after the first")
    print(f"{'dtype':>9} {'samples':>7} | {'ours':>9} | {'transformers':>12} | ours / theirs | ours / ours at 1 sample")
    results = {}
    for dtype_name in args.sweep_dtypes:
        theirs_model = hf_model.to(device=device, dtype=getattr(torch, dtype_name))
        for batch in BATCHES:
            kv = generate.load_or_compile(
                checkpoint, getattr(tp, dtype_name), None, backend_name, use_engine_cache=False, batch_size=batch
            )
            ours = lambda: generate.generate(kv, prompt, n, greedy, torch.Generator(device), num_samples=batch)
            idx = torch.tensor([prompt] * batch, device=device)

            def theirs(tokens):
                with torch.no_grad():
                    yield from theirs_model.generate(
                        idx, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0
                    )

            list(ours())  # warm-up
            list(theirs(2))
            ours_rates, theirs_rates = [], []
            for _ in range(args.repeats):
                times = timed_tokens(ours(), sync)[1]
                ours_rates.append(batch * (n - 1) / (times[-1] - times[0]))
                one, full = timed_tokens(theirs(1), sync), timed_tokens(theirs(n), sync)
                theirs_rates.append(batch * (n - 1) / ((full[1][-1] - full[0]) - (one[1][-1] - one[0])))
            ours_rate, theirs_rate = statistics.median(ours_rates), statistics.median(theirs_rates)
            results[dtype_name, batch] = ours_rate
            print(
                f"{dtype_name:>9} {batch:>7} | {ours_rate:>9.1f} | {theirs_rate:>12.1f} | "
                f"{ours_rate / theirs_rate:>13.2f} | "
                f"{ours_rate / results[dtype_name, 1]:.2f}",
                flush=True,
            )
    if ("float32", 8) in results and ("bfloat16", 8) in results:
        print(f"bfloat16 / float32 at 8 samples: {results['bfloat16', 8] / results['float32', 8]:.2f}")


def rss_anon_mib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_memory(args, checkpoint, prompt, backend_name, device):
    """The process's peak anonymous memory while 16 samples fill the whole block, in each sweep dtype."""
    import nvtripy as tp
    import torch

    import generate
    from sampling import Sampling

    batch, config = max(BATCHES), checkpoint.hf_config
    new_tokens = config.n_positions - len(prompt)
    print()
    print(f"peak memory: {batch} samples x {config.n_positions} tokens (the full block), greedy")
    for dtype_name in args.sweep_dtypes:
        kv = generate.load_or_compile(
            checkpoint, getattr(tp, dtype_name), None, backend_name, use_engine_cache=False, batch_size=batch
        )
        itemsize = torch.empty((), dtype=getattr(torch, dtype_name)).element_size()
        cache_mib = 2 * config.n_layer * batch * config.n_positions * config.n_embd * itemsize / 2**20
        before, peak, done = rss_anon_mib(), [0.0], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_anon_mib())
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        steps = list(
            generate.generate(kv, prompt, new_tokens, Sampling(0.0, 1), torch.Generator(device), num_samples=batch)
        )
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        print(
            f"  {dtype_name}: anonymous memory {before:.0f} MiB before, {peak[0]:.0f} MiB at the peak "
            f"(+{peak[0] - before:.0f} MiB); "
            f"the full KV cache is {cache_mib:.0f} MiB, the weights {kv.weight_bytes / 2**20:.0f} MiB; "
            f"{len(steps)} steps in {seconds:.0f} s",
            flush=True,
        )
        del kv


if __name__ == "__main__":
    main()
