#!/usr/bin/env bash
# Set up (if needed) and run the main job offline: explain the bundled Fashion-MNIST test images
# (and any image paths given as arguments) with the shipped default model; PNGs go to ./out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/bcos-zoo demo -o out "$@"
