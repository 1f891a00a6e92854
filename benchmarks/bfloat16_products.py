"""The 48 weight products of a GPT-2-124M decode step in bfloat16, by the two kernels the executor chooses between.

For each row count: every block's four weights (768x2304, 768x768, 768x3072, 3072x768; random, bfloat16)
multiplied by that many bfloat16 rows through
  - onednn: oneDNN's prepacked bfloat16 product (torch.ops.mkldnn._linear_pointwise), what the executor
    runs for 3 to 16 rows on a CPU with bfloat16 arithmetic;
  - fbgemm: fbgemm's float16 product (torch.ops.quantized.linear_dynamic_fp16) by a float16 copy of the
    weight, the rows converted to float32 and the sums back to bfloat16, what it runs for 1 or 2 rows there
    and for 1 to 16 on a CPU without bfloat16 arithmetic (benchmarks/without_bfloat16.sh runs this as on one).
--sets copies of the 48 weights are multiplied in turn, so that each pass reads its weights from memory
rather than from the last level cache (a set is 170 MB; 4 sets pass a 300 MB cache). The kernels take turns
pass by pass; a pass's time is the median over --repeats. It prints the CPU's flags and the bytes each
pass reads per second. Not a test: run it, read it.

    python benchmarks/bfloat16_products.py [--threads 1] [--rows 1 2 4 8] [--sets 4] [--repeats 12]
"""

import argparse
import math
import statistics
import time

from machine import cpu_flags

SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]  # (in, out) of a block's four weights
LAYERS = 12
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--sets", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"CPU flags: {cpu_flags(CPU_FLAGS)}")
    weights = [[torch.randn(k, n).mul_(0.02).bfloat16() for k, n in SHAPES * LAYERS] for _ in range(args.sets)]
    weight_bytes = sum(w.numel() * 2 for w in weights[0])

    def float16_copy(weight):
        """fbgemm's packed float16 copy of a weight times the power of two that brings its largest magnitude
        nearest below 65504, and the power of two that undoes it."""
        shift = math.floor(math.log2(65504 / weight.abs().max().item()))
        return torch.ops.quantized.linear_prepack_fp16((weight.t() * 2.0**shift).half().float(), None), 2.0**-shift

    float16 = [[float16_copy(w) for w in ws] for ws in weights]

    def by_fbgemm(packed, inputs):
        for (p, unscale), x in zip(packed, inputs):
            torch.ops.quantized.linear_dynamic_fp16(x.float(), p).mul_(unscale).to(torch.bfloat16)

    def by_onednn(packed, inputs):
        for p, x in zip(packed, inputs):
            torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")

    print(f"{LAYERS * len(SHAPES)} products, {weight_bytes / 1e6:.0f} MB of bfloat16 weights a pass, {args.sets} sets")
    print(f"{'rows':>5} | {'onednn ms':>9} {'GB/s':>6} | {'fbgemm ms':>9} {'GB/s':>6} | fbgemm / onednn")
    for count in args.rows:
        onednn = [[torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), count) for w in ws] for ws in weights]
        inputs = [torch.randn(count, w.shape[0]).bfloat16() for w in weights[0]]
        times = {"onednn": [], "fbgemm": []}
        for repeat in range(args.repeats + 1):
            for name, run, packed in (("onednn", by_onednn, onednn), ("fbgemm", by_fbgemm, float16)):
                start = time.perf_counter()
                run(packed[repeat % args.sets], inputs)
                if repeat:  # the first round warms both kernels up
                    times[name].append(time.perf_counter() - start)
        a, b = statistics.median(times["onednn"]), statistics.median(times["fbgemm"])
        gbs = [weight_bytes / t / 1e9 for t in (a, b)]
        print(f"{count:>5} | {a * 1e3:9.2f} {gbs[0]:6.1f} | {b * 1e3:9.2f} {gbs[1]:6.1f} | {b / a:.2f}")
        del onednn


if __name__ == "__main__":
    main()
