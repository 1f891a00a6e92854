#!/usr/bin/env bash
# Runs a command as on an x86 CPU without bfloat16 arithmetic, on one that has it: the command sees a
# /proc/cpuinfo without the avx512_bf16 and amx_bf16 flags (from which torch_executor chooses its kernels),
# and oneDNN, which reads the CPU itself, is capped at AVX-512 with VNNI (Cascade Lake's instructions).
# torch's own int4 and int8 kernels and fbgemm's float16 product use no bfloat16 instructions, so they run
# as they would there. Needs unprivileged user namespaces (unshare -rm).
#
#     bash benchmarks/without_bfloat16.sh python benchmarks/quantized_decode.py --dtypes float32 bfloat16
set -euo pipefail
if [ $# -eq 0 ]; then
    echo "usage: bash benchmarks/without_bfloat16.sh COMMAND [ARGS...]" >&2
    exit 2
fi
cpuinfo=$(mktemp)
trap 'rm -f "$cpuinfo"' EXIT
sed -E 's/ (avx512_bf16|amx_bf16)\b//g' /proc/cpuinfo > "$cpuinfo"
export ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI
unshare -rm sh -c 'mount --bind "$0" /proc/cpuinfo && exec "$@"' "$cpuinfo" "$@"
