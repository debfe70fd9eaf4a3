#!/usr/bin/env bash
# tuwen vs Hugging Face VisionEncoderDecoderModel on CUDA, bf16, ViT-B/16 224 px + GPT-2 124M,
# batch 64: samples/s, MFU against the measured bf16 GEMM rate, ratio to the peer.
#   benchmarks/gpu.sh                         # on a CUDA machine
#   benchmarks/gpu.sh --device cpu --quick    # the same code at tiny sizes on a CPU
# Writes benchmarks/results/gpu.json and prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
exec "$PYTHON" -m benchmarks.gpu "$@"
