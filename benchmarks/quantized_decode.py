"""Decode speed and weight memory of quantized programs on the CPU executor, next to transformers.

For a GPT-2-124M-shaped checkpoint with random weights (GPT2Config() defaults), for each quant mode
(none, int8, int4, float8), dtype and batch size: load and (for a mode) calibrate the model with
ModelOpt on --calib-samples samples, compile prefill and decode, prefill a random prompt of --cache
tokens, then time --steps decode steps a round, as benchmarks/decode_step.py does. transformers'
GPT2LMHeadModel with a DynamicCache runs in the same dtypes at the same batches.
Each (mode, dtype) is first built in a process of its own, so that its peak memory (the process's
peak resident set: calibration, model and programs) and its resident set at the end (model and
programs, calibration freed) are its own. Then every one is built again in this process and timed a
round each in turn, round after round: on a shared machine a slow spell then hits every row alike,
where rows timed one process after another differed by 2x. A step's time is the median over all
rounds' steps; tokens/s counts every sample of the batch. The ratios the targets of issue 15 are
about follow the table. "weights MB" is torch_executor.weight_bytes(decode), what the speed
report counts: the constants the decode program reads each step.
Not a test: run it, read it.

    python benchmarks/quantized_decode.py [--threads 1] [--modes none int8 int4 float8]
        [--dtypes float32 bfloat16 float16] [--batches 1 8] [--calib-samples 4]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import backend  # noqa: E402
from machine import cpu_flags  # noqa: E402

MODES = {"none": None, "int8": "int8-weight-only", "int4": "int4-weight-only", "float8": "float8"}
DTYPES = ("float32", "bfloat16", "float16")
CPU_FLAGS = ("avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


def load_average():
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" (1, 5, 15 min; {os.cpu_count()} CPUs)"


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def ours(args, checkpoint_dir, mode_name, dtype):
    """{batch: (start, step, weights MB)} of our compiled prefill and decode for one (mode, dtype)."""
    import nvtripy as tp
    import torch

    import generate
    import quantization
    import torch_executor
    import weight_loader
    from checkpoint import open_checkpoint

    checkpoint = open_checkpoint(checkpoint_dir)
    mode = MODES[mode_name]
    quant = quantization.prepare(checkpoint, quantization.QUANT_MODES[mode], None, args.calib_samples) if mode else None
    model = weight_loader.load_model(checkpoint, getattr(tp, dtype), quant)
    runs = {}
    for batch in args.batches:
        prefill, decode = generate.compile_prefill(model, batch), generate.compile_decode(model, batch)
        state = {}

        def start(prompt, prefill=prefill, state=state):
            _, *state["cache"] = prefill(tp.Tensor(prompt.tolist(), device=tp.device("gpu")))

        def step(tokens, decode=decode, state=state):
            logits, *state["cache"] = decode(tp.Tensor(tokens.tolist(), device=tp.device("gpu")), state["cache"])
            return torch.from_dlpack(logits)

        runs[batch] = (start, step, torch_executor.weight_bytes(decode) / 1e6)
    return runs


def transformers_runs(args, checkpoint_dir, dtype):
    """{batch: (start, step, weights MB)} of transformers' GPT2LMHeadModel with a DynamicCache."""
    import inspect

    import torch
    from transformers import DynamicCache, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(checkpoint_dir, dtype=getattr(torch, dtype)).eval()
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    runs = {}
    for batch in args.batches:
        state = {}

        def start(prompt, state=state):
            state["cache"] = DynamicCache()
            with torch.no_grad():
                model(prompt.long(), use_cache=True, **{cache_arg: state["cache"]})

        def step(tokens, state=state):
            with torch.no_grad():
                return model(tokens.long(), use_cache=True, **{cache_arg: state["cache"]}).logits

        runs[batch] = (start, step, weights)
    return runs


def build(args, checkpoint_dir, runner, mode, dtype):
    if runner == "transformers":
        return transformers_runs(args, checkpoint_dir, dtype)
    return ours(args, checkpoint_dir, mode, dtype)


def timed_round(start, step, prompt, tokens, clock):
    """The times of one round's decode steps, after a prefill of the prompt."""
    start(prompt)
    times = []
    for step_tokens in tokens:
        begin = clock()
        step(step_tokens)
        times.append(clock() - begin)
    return times


def time_interleaved(args, checkpoint_dir, runs):
    """{(runner, mode, dtype, batch): row}: every run built in this process, then timed a round each in
    turn, round after round, so that a slow spell of a shared machine hits every run alike; a step's time
    is the median over all its rounds' steps."""
    import torch

    built = {}
    for runner, mode, dtype in runs:
        for batch, run in build(args, checkpoint_dir, runner, mode, dtype).items():
            built[runner, mode, dtype, batch] = run
    clock = CLOCKS[args.clock]
    times = {key: [] for key in built}
    for round_index in range(args.rounds + 1):  # the first round warms up
        for (runner, mode, dtype, batch), (start, step, _) in built.items():
            prompt, tokens = inputs(batch, args)
            with torch.no_grad():
                round_times = timed_round(start, step, prompt, tokens, clock)
            if round_index:
                times[runner, mode, dtype, batch] += round_times
    return {key: {"ms": 1e3 * statistics.median(times[key]), "weights_mb": built[key][2]} for key in built}


def inputs(batch, args):
    import torch

    generator = torch.Generator().manual_seed(batch)
    prompt = torch.randint(0, 50257, (batch, args.cache), dtype=torch.int32, generator=generator)
    tokens = [torch.randint(0, 50257, (batch, 1), dtype=torch.int32, generator=generator) for _ in range(args.steps)]
    return prompt, tokens


def child(args):
    """Builds one (mode, dtype) in this process, for its peak memory and resident set."""
    backend.select_backend("cpu")
    import torch

    torch.set_num_threads(args.threads)
    build(args, args.checkpoint, "transformers" if args.mode == "transformers" else "ours", args.mode, args.dtype)
    print(json.dumps({"peak_mb": peak_mb(), "resident_mb": resident_mb()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--modes", choices=MODES, nargs="+", default=list(MODES))
    parser.add_argument("--dtypes", choices=DTYPES, nargs="+", default=list(DTYPES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--calib-samples", type=int, default=4, help="calibration samples (default: %(default)s)")
    parser.add_argument("--cache", type=int, default=32, help="tokens in the cache before the first timed step")
    parser.add_argument("--steps", type=int, default=8, help="timed decode steps a round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clock", choices=CLOCKS, default="cpu", help="the process's CPU time (default), or wall time")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # a child's (mode, dtype, checkpoint)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        return child(args)

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import make_tiny_checkpoint

    capability = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU capability {capability}")
    print(f"CPU flags: {cpu_flags(CPU_FLAGS)}")
    print(f"load average before: {load_average()}")
    print(
        f"GPT2Config() shape, random weights; cache {args.cache} -> {args.cache + args.steps} tokens; median of "
        f"{args.steps} steps x {args.rounds} rounds, {args.clock} clock; calibration on {args.calib_samples} samples"
    )
    torch.manual_seed(0)
    header = (
        f"{'runner':>12} {'mode':>6} {'dtype':>8} {'batch':>5} | {'ms/step':>8} {'tok/s':>8} | "
        f"{'weights MB':>10} {'peak MB':>8} {'RSS MB':>7}"
    )
    with tempfile.TemporaryDirectory() as checkpoint:
        GPT2LMHeadModel(GPT2Config()).save_pretrained(checkpoint)
        make_tiny_checkpoint.write_tokenizer(checkpoint)
        runs = [("ours", mode, dtype) for mode in args.modes for dtype in args.dtypes]
        runs += [("transformers", "none", dtype) for dtype in args.dtypes]
        memory = {}
        for runner, mode, dtype in runs:
            command = [sys.executable, os.path.abspath(__file__), "--checkpoint", checkpoint, "--dtype", dtype]
            command += ["--mode", mode if runner == "ours" else "transformers", "--threads", str(args.threads)]
            command += ["--calib-samples", str(args.calib_samples), "--batches", *map(str, args.batches)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                print(f"{runner:>12} {mode:>6} {dtype:>8} failed:\n{done.stderr[-2000:]}")
                return 1
            memory[runner, mode, dtype] = json.loads(done.stdout.strip().splitlines()[-1])
        backend.select_backend("cpu")
        torch.set_num_threads(args.threads)
        results = time_interleaved(args, checkpoint, runs)
    print()
    print(header)
    for (runner, mode, dtype, batch), row in results.items():
        report = memory[runner, mode, dtype]
        print(
            f"{runner:>12} {mode:>6} {dtype:>8} {batch:>5} | {row['ms']:>8.2f} {1e3 * batch / row['ms']:>8.1f} | "
            f"{row['weights_mb']:>10.1f} {report['peak_mb']:>8.0f} {report['resident_mb']:>7.0f}"
        )
    print()
    print_ratios(results, args)
    print(f"load average after: {load_average()}")


def print_ratios(results, args):
    """tokens/s over tokens/s, as the targets state them."""

    def speed(runner, mode, dtype, batch):
        row = results.get((runner, mode, dtype, batch))
        return None if row is None else batch / row["ms"]

    def ratio(text, a, b, target=None):
        if a is not None and b is not None:
            met = target is None or a / b >= target
            verdict = "" if target is None else f"  (target >= {target:.2f}x: {'met' if met else 'MISSED'})"
            print(f"{text}: {a / b:.2f}x{verdict}")

    base = speed("ours", "none", "float32", 1)
    ratio("int4 bfloat16 / none float32, batch 1", speed("ours", "int4", "bfloat16", 1), base, 2.0)
    ratio("int8 bfloat16 / none float32, batch 1", speed("ours", "int8", "bfloat16", 1), base, 1.6)
    ratio("none bfloat16 / none float32, batch 1", speed("ours", "none", "bfloat16", 1), base, 1.4)
    ratio("none float16 / none float32, batch 1", speed("ours", "none", "float16", 1), base, 1.0)  # "faster"
    # Quantized against unquantized: in float32 at every batch (never slower), in bfloat16 past batch 1 (0.9x).
    comparisons = [(batch, "float32", 1.0) for batch in args.batches]
    comparisons += [(batch, "bfloat16", 0.9) for batch in args.batches if batch > 1]
    comparisons += [(batch, "float16", None) for batch in args.batches]
    for batch, dtype, target in comparisons:
        for mode in ("int8", "int4", "float8"):
            label = f"{mode} {dtype} / none {dtype}, batch {batch}"
            ratio(label, speed("ours", mode, dtype, batch), speed("ours", "none", dtype, batch), target)
    for batch in args.batches:
        for dtype in args.dtypes:
            ratio(
                f"ours / transformers, none {dtype}, batch {batch}",
                speed("ours", "none", dtype, batch),
                speed("transformers", "none", dtype, batch),
                0.95 if dtype == "float32" else None,
            )


if __name__ == "__main__":
    main()
