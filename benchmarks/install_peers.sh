#!/usr/bin/env sh
# Peers for benchmarks/export_scale.py --peers (and benchmarks/compare.py): onnxruntime-genai's model builder.
# --no-deps: it needs onnxruntime>=1.31, which llamaport already installs; never let it replace that one.
set -e
python -m pip install --no-deps onnxruntime-genai
