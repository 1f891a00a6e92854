"""Measures peak host memory of weight_loader.load_model on GPT-2-XL-shaped random weights.

    python benchmarks/loader_memory.py [--size xl|large|medium|small] [--workdir DIR] [--keep]
    python benchmarks/loader_memory.py --checkpoint DIR [--json]

Writes a random checkpoint of that shape with transformers (about 6.2 GB for xl; deleted afterwards
unless --keep), then, in a fresh process on the CPU backend, builds the GPT and loads the weights,
and reports the process's peak resident memory (ru_maxrss) against the checkpoint's size, and the
peak of its anonymous memory alone (ru_maxrss also counts the memory-mapped checkpoint's pages).
The goal is a peak under about 2x the fp32 checkpoint.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {  # n_layer, n_head, n_embd of the Hub's GPT-2 models
    "small": (12, 12, 768),
    "medium": (24, 16, 1024),
    "large": (36, 20, 1280),
    "xl": (48, 25, 1600),
}

WRITE = """
import sys, torch, transformers
sys.path.insert(0, sys.argv[5])
from transformers import GPT2Config, GPT2LMHeadModel
import make_tiny_checkpoint
transformers.utils.logging.disable_progress_bar()
n_layer, n_head, n_embd = map(int, sys.argv[2:5])
config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd)
torch.manual_seed(0)
GPT2LMHeadModel(config).save_pretrained(sys.argv[1])
make_tiny_checkpoint.write_tokenizer(sys.argv[1])  # a tokenizer of its own: no download
"""

LOAD = """
import json, resource, sys, threading, time
sys.path.insert(0, sys.argv[1])
import backend
backend.select_backend("cpu")
import nvtripy as tp
import weight_loader
from checkpoint import open_checkpoint

def status_mib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0

# ru_maxrss counts the checkpoint's memory-mapped pages too (clean page cache the kernel can drop);
# a sampler also records the peak of anonymous memory alone, which is what must really fit.
peak_anon, done = [0.0], threading.Event()
def sample():
    while not done.is_set():
        peak_anon[0] = max(peak_anon[0], status_mib("RssAnon"))
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()

dtype = {"float32": tp.float32, "float16": tp.float16}[sys.argv[3]]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
model = weight_loader.load_model(open_checkpoint(sys.argv[2]), dtype)
seconds = time.perf_counter() - start
done.set()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_mib": peak, "peak_anon_mib": peak_anon[0], "before_mib": before, "seconds": seconds}))
"""


def measure(checkpoint):
    """Loads `checkpoint` as float32 and as float16, each in a fresh process; returns the figures in MiB."""
    size_mib = (
        sum(
            os.path.getsize(os.path.join(checkpoint, name))
            for name in os.listdir(checkpoint)
            if name.endswith((".safetensors", ".bin"))
        )
        / 2**20
    )
    result = {"checkpoint_mib": size_mib}
    for dtype in ("float32", "float16"):
        out = subprocess.run(
            [sys.executable, "-c", LOAD, REPO_ROOT, checkpoint, dtype], check=True, capture_output=True, text=True
        ).stdout
        result[dtype] = json.loads(out.strip().splitlines()[-1])
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=SHAPES, default="xl", help="default: %(default)s")
    parser.add_argument("--workdir", help="where to write the checkpoint (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint")
    parser.add_argument("--checkpoint", metavar="DIR", help="measure this checkpoint instead of writing one")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    checkpoint, workdir = args.checkpoint, None
    if checkpoint is None:
        workdir = args.workdir or tempfile.mkdtemp(prefix="gpt2-memory-")
        checkpoint = os.path.join(workdir, f"random-gpt2-{args.size}")
    try:
        if not os.path.exists(os.path.join(checkpoint, "config.json")):
            print(
                f"Writing a random gpt2-{args.size}-shaped checkpoint to {checkpoint} ...", file=sys.stderr, flush=True
            )
            subprocess.run(
                [sys.executable, "-c", WRITE, checkpoint, *map(str, SHAPES[args.size]), REPO_ROOT], check=True
            )
        result = measure(checkpoint)
    finally:
        if workdir is not None and not args.keep:
            shutil.rmtree(checkpoint if args.workdir else workdir, ignore_errors=True)

    if args.json:
        print(json.dumps(result))
        return
    size_mib = result["checkpoint_mib"]
    print(f"Checkpoint: {size_mib:.0f} MiB of weights")
    for dtype in ("float32", "float16"):
        r = result[dtype]
        print(
            f"load as {dtype}: peak RSS {r['peak_mib']:.0f} MiB = {r['peak_mib'] / size_mib:.2f}x the checkpoint "
            f"(of which anonymous memory {r['peak_anon_mib']:.0f} MiB = {r['peak_anon_mib'] / size_mib:.2f}x; "
            f"{r['before_mib']:.0f} MiB before loading: Python, torch, transformers, nvtripy), {r['seconds']:.1f} s"
        )


if __name__ == "__main__":
    main()
