"""llamaport: one import namespace over the top-level folders (models/, exporter/, plugins/, runtime/, ci/)."""

from pathlib import Path

from setuptools import setup

PACKAGE_DIRS = {
    "llamaport": "llamaport",
    "llamaport.models": "models",
    "llamaport.models.loaders": "models/loaders",
    "llamaport.exporter": "exporter",
    "llamaport.plugins": "plugins",
    "llamaport.runtime": "runtime",
    "llamaport.ci": "ci",
}

# Running engines needs no torch: the base install is the ONNX Runtime path.
RUNTIME = [
    "numpy>=1.26",
    "onnxruntime>=1.23",
    "onnx>=1.19",  # `bench` builds its bandwidth probe with it; small, no torch
    "tokenizers>=0.20,<1",
    "sentencepiece>=0.2,<0.3",
    "protobuf>=4",
    "jinja2>=3.1",
    "click>=8.1",
    "tqdm>=4.66",
    "tomli>=2; python_version < '3.11'",  # engines.toml on 3.10 (3.11 has it as tomllib)
]
EXPORT = [
    "torch==2.13.0",  # the CPU build lies on disk on our machines; pinned so pip never pulls a CUDA build
    "safetensors>=0.4",
    "gguf>=0.10",
    "onnxscript>=0.5",
    "polygraphy>=0.49",  # `llamaport check` compares logits with its comparator (pure Python, 0.5 MB)
]
# Building `--plugins llamaport` engines compiles the plugin kernels with triton (plugins/triton_trt_kernels.py);
# running a built engine needs tensorrt, polygraphy and numpy only.
TENSORRT = ["tensorrt>=10.15", "polygraphy>=0.49", "triton>=3.2"]
# `pipeline run`'s chart (decode tokens/s against perplexity delta); without matplotlib it is skipped with a note.
PLOT = ["matplotlib>=3.8"]
# Triton kernels (plugins/triton_*.py): the wheel needs no torch, so it never moves the torch pin; CI runs them on
# the CPU through its interpreter (TRITON_INTERPRET=1).
CUDA = EXPORT + ["triton>=3.2"]
DEV = EXPORT + ["pytest>=8", "transformers>=5.0,<6", "accelerate>=1.0", "triton>=3.2"]

setup(
    name="llamaport",
    version="0.1.0",
    description="Llama-family models from PyTorch to ONNX/TensorRT engines, with a runtime and accuracy checks",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=list(PACKAGE_DIRS),
    package_dir=PACKAGE_DIRS,
    package_data={"llamaport.exporter": ["calibration.txt"]},  # GPTQ's built-in calibration text
    install_requires=RUNTIME,
    extras_require={"export": EXPORT, "tensorrt": TENSORRT, "cuda": CUDA, "plot": PLOT, "dev": DEV},
    entry_points={"console_scripts": ["llamaport=llamaport.cli:run"]},
    license="Apache-2.0",
)
