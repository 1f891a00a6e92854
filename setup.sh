#!/usr/bin/env bash
# Creates .venv and installs the project into it, saying before each step what it installs.
#   bash setup.sh        CPU-only: the PyTorch executor runs nvtripy (for laptops, CI, the tests)
#   bash setup.sh gpu    NVIDIA GPU: the real TensorRT backend (requirements.txt)
#
# CPU-only, torch comes from PyPI by default, which on Linux serves the CUDA build: about 2.7 GB of
# downloads, most of it NVIDIA's libraries, which the CPU executor never uses. Where PyTorch's own
# package index can be reached, its CPU wheel (about 190 MB) avoids them:
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"
kind="${1:-cpu}"

say() { echo "setup.sh: $*" >&2; }
install() { .venv/bin/python -m pip install "$@"; }

case "$kind" in
  cpu | gpu) ;;
  *)
    echo "usage: [TORCH_INDEX_URL=URL] bash setup.sh [cpu|gpu]" >&2
    exit 2
    ;;
esac

steps=3
[ "$kind" = gpu ] && steps=2
say "[1/$steps] creating the virtual environment .venv"
python3 -m venv .venv

case "$kind" in
  cpu)
    torch_pin="$(grep -E '^torch==' requirements-cpu.txt)"
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
      say "[2/$steps] installing $torch_pin from $TORCH_INDEX_URL (the CPU wheel on PyTorch's index is about 190 MB)"
      install "$torch_pin" --index-url "$TORCH_INDEX_URL"
      say "[2/$steps] installing the rest of requirements-cpu.txt from PyPI (transformers, ModelOpt, tiktoken," \
        "numpy, pytest and their dependencies: about 115 MB)"
    else
      say "[2/$steps] installing requirements-cpu.txt from PyPI: $torch_pin, which on Linux is the CUDA build" \
        "(about 2.7 GB of downloads with NVIDIA's libraries; TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" \
        "takes the 190 MB CPU wheel instead), then transformers, ModelOpt, tiktoken, numpy and pytest (about 115 MB)"
    fi
    install -r requirements-cpu.txt
    say "[3/$steps] installing nvtripy 0.1.7 without its dependencies (TensorRT and mlir-tensorrt need a GPU)"
    install --no-deps nvtripy==0.1.7
    ;;
  gpu)
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
      say "TORCH_INDEX_URL is for the CPU-only set-up; the GPU set-up takes PyTorch's CUDA build from PyPI"
    fi
    say "[2/$steps] installing requirements.txt: nvtripy 0.1.7 with TensorRT and mlir-tensorrt from NVIDIA's" \
      "package index, PyTorch's CUDA build, transformers, ModelOpt and tiktoken (several GB)"
    install -r requirements.txt
    ;;
esac

say "done. Activate the environment in each new shell with: source .venv/bin/activate"
