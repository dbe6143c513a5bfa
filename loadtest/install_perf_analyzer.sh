#!/usr/bin/env bash
# Install Triton's perf_analyzer (the benchmark's load generator) into its own venv.
#
#   bash loadtest/install_perf_analyzer.sh [VENV]      # VENV defaults to /tmp/pa-venv
#
# Idempotent: each step is skipped when its result is already there. tritonclient 2.51.0
# is the last wheel that bundles the perf_analyzer binary and runs on glibc 2.36 (Debian
# 12); the CUDA runtime wheel only provides libcudart, which the binary loads (no GPU
# needed). Kept apart from the project's venv: modelgate's own install never needs it.
set -euo pipefail

VENV="${1:-/tmp/pa-venv}"
PYTHON="${PYTHON:-python3}"

if ! dpkg -s libb64-0d >/dev/null 2>&1; then
    sudo_cmd=()
    if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
    "${sudo_cmd[@]}" apt-get update
    "${sudo_cmd[@]}" apt-get install -y libb64-0d
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi

if [ ! -x "$VENV/bin/perf_analyzer" ] || ! ls -d "$VENV"/lib/python*/site-packages/nvidia/cuda_runtime/lib >/dev/null 2>&1; then
    "$VENV/bin/pip" install --quiet "tritonclient[all]==2.51.0" "nvidia-cuda-runtime-cu12==12.9.79"
fi

cuda_lib="$(ls -d "$VENV"/lib/python*/site-packages/nvidia/cuda_runtime/lib | head -n 1)"
LD_LIBRARY_PATH="$cuda_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$VENV/bin/perf_analyzer" --version
echo "perf_analyzer ready: $VENV/bin/perf_analyzer (LD_LIBRARY_PATH=$cuda_lib)"
