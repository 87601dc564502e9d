#!/usr/bin/env sh
# Peers for the benchmarks (benchmarks/compare.py, export_scale.py --peers, int4_peers.py), installed the same way
# on every machine, from package registries only (no other internet access is assumed):
#
#   1. onnxruntime-genai (model builder + runtime), from PyPI into the current Python.
#      --no-deps: it needs onnxruntime>=1.31, which llamaport already installs; never let it replace that one.
#   2. llama.cpp's llama-bench and llama-quantize, built from source, plus its convert_hf_to_gguf.py (HF folder ->
#      GGUF). The source is llama-cpp-python's sdist from PyPI, which vendors llama.cpp's full tree under
#      vendor/llama.cpp. Release build, -DGGML_NATIVE=ON (this CPU's instruction set, as llama.cpp is run at its best),
#      static libraries so the binaries can be copied, `cmake --build -j ${LLAMAPORT_PEERS_JOBS:-2}`.
#
# Everything from step 2 goes under ${LLAMAPORT_PEERS:-$HOME/.cache/llamaport-peers} (never into the repository):
#   $LLAMAPORT_PEERS/llama.cpp/bin/{llama-bench,llama-quantize}
#   $LLAMAPORT_PEERS/llama.cpp/convert_hf_to_gguf.py   (run it with PYTHONPATH=$LLAMAPORT_PEERS/llama.cpp/gguf-py,
#                                                     the gguf package of the same llama.cpp version)
#   $LLAMAPORT_PEERS/llama.cpp/VERSION                 (llama-cpp-python version + vendored llama.cpp build)
#
# Idempotent: a step whose result is already there (same llama-cpp-python version) is skipped, so re-running is
# cheap. The build takes ~15-25 min on 2 cores. Pin another version with LLAMA_CPP_PYTHON_VERSION=x.y.z.
#
#   sh benchmarks/install_peers.sh            # both peers
#   LLAMAPORT_PEERS=/tmp/peers sh benchmarks/install_peers.sh
set -eu

PEERS="${LLAMAPORT_PEERS:-$HOME/.cache/llamaport-peers}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${LLAMAPORT_PEERS_JOBS:-2}"
PYTHON="${PYTHON:-python}"
DEST="$PEERS/llama.cpp"

# 1. onnxruntime-genai
if "$PYTHON" -c "import onnxruntime_genai" 2>/dev/null; then
    echo "onnxruntime-genai: already installed"
else
    "$PYTHON" -m pip install --no-deps onnxruntime-genai
fi

# 2. llama.cpp from llama-cpp-python's sdist
if [ -x "$DEST/bin/llama-bench" ] && [ -x "$DEST/bin/llama-quantize" ] && [ -f "$DEST/convert_hf_to_gguf.py" ] \
    && grep -q "^llama-cpp-python $VERSION\$" "$DEST/VERSION" 2>/dev/null; then
    echo "llama.cpp: already built ($(head -1 "$DEST/VERSION"))"
else
    SRC="$PEERS/src"
    mkdir -p "$SRC"
    SDIST="$SRC/llama_cpp_python-$VERSION.tar.gz"
    if [ ! -f "$SDIST" ]; then
        # --no-binary :all: gives the sdist (the wheel has no tools); --no-deps: nothing else is wanted.
        "$PYTHON" -m pip download --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$SRC"
    fi
    TREE="$SRC/llama_cpp_python-$VERSION"
    [ -d "$TREE/vendor/llama.cpp" ] || tar -xzf "$SDIST" -C "$SRC"
    LLAMA="$TREE/vendor/llama.cpp"
    BUILD="$SRC/build-$VERSION"
    # Only what llama-bench and llama-quantize need: no server (OpenSSL), tests or examples.
    cmake -S "$LLAMA" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF
    cmake --build "$BUILD" --config Release --target llama-bench llama-quantize -j "$JOBS"
    rm -rf "$DEST.partial"
    mkdir -p "$DEST.partial/bin"
    cp "$BUILD/bin/llama-bench" "$BUILD/bin/llama-quantize" "$DEST.partial/bin/"
    cp "$LLAMA/convert_hf_to_gguf.py" "$DEST.partial/"
    cp -R "$LLAMA/gguf-py" "$DEST.partial/gguf-py"
    [ -d "$LLAMA/conversion" ] && cp -R "$LLAMA/conversion" "$DEST.partial/conversion"
    { echo "llama-cpp-python $VERSION"; "$DEST.partial/bin/llama-bench" --version 2>&1 | head -2; } \
        > "$DEST.partial/VERSION"
    rm -rf "$DEST"
    mv "$DEST.partial" "$DEST"
fi

echo "llama-bench:        $DEST/bin/llama-bench"
echo "llama-quantize:     $DEST/bin/llama-quantize"
echo "convert_hf_to_gguf: PYTHONPATH=$DEST/gguf-py $PYTHON $DEST/convert_hf_to_gguf.py"
echo "version:            $(tr '\n' ' ' < "$DEST/VERSION")"
