"""Shared test setup: pick the nvtripy backend (TRIPY_EXAMPLE_BACKEND, default auto) before anything imports nvtripy."""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import backend  # noqa: E402

BACKEND = backend.select_backend_from_env()
