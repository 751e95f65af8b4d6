#!/usr/bin/env bash
# Set up a fresh machine for bcos-zoo: the Fashion-MNIST data (Debian package), a virtualenv in
# .venv with the pinned PyTorch, and bcos-zoo itself (editable) with the test extras.
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }
fi

pip_install() {  # quiet unless it fails
    .venv/bin/pip install -q "$@" >.venv/pip.log 2>&1 || { cat .venv/pip.log >&2; exit 1; }
}

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch, torchvision, sys; sys.exit(torch.__version__.split('+')[0] != '2.14.1')" 2>/dev/null; then
    pip_install torch==2.14.1 torchvision==0.29.1
fi
pip_install -e ".[test]"
.venv/bin/python -c "import bcos_zoo, torch; print('bcos-zoo', bcos_zoo.__version__, 'torch', torch.__version__)"
