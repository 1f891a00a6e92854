#!/usr/bin/env bash
# Creates .venv and installs the project into it.
#   bash setup.sh        CPU-only: the PyTorch executor runs nvtripy (for laptops, CI, the tests)
#   bash setup.sh gpu    NVIDIA GPU: the real TensorRT backend (requirements.txt)
set -euo pipefail
cd "$(dirname "$0")"
kind="${1:-cpu}"
python3 -m venv .venv
case "$kind" in
  cpu)
    .venv/bin/python -m pip install --quiet -r requirements-cpu.txt
    .venv/bin/python -m pip install --quiet --no-deps nvtripy==0.1.7
    ;;
  gpu)
    .venv/bin/python -m pip install --quiet -r requirements.txt
    ;;
  *)
    echo "usage: bash setup.sh [cpu|gpu]" >&2
    exit 2
    ;;
esac
