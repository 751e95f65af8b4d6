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

# The browser of the web demo's end-to-end test: Debian's chromium, driven by Playwright (which downloads no
# browser). Installed in the background while pip works; waited for at the end.
CHROMIUM_PID=""
if [ ! -x /usr/bin/chromium ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    { $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null; }; } &
    CHROMIUM_PID=$!
fi

pip_install() {  # quiet unless it fails; no .pyc compilation of whole packages (imports compile what they use)
    .venv/bin/pip install -q --no-compile "$@" >.venv/pip.log 2>&1 || { cat .venv/pip.log >&2; exit 1; }
}

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch, torchvision, sys; sys.exit(torch.__version__.split('+')[0] != '2.14.1')" 2>/dev/null; then
    pip_install torch==2.14.1 torchvision==0.29.1
fi
pip_install -e ".[test]"

# The web demo, bcos-zoo[demo] (`bcos-zoo serve`). Gradio caps pillow below 13, a release newer than it: it is
# installed without that cap, so the venv keeps the pillow chosen above (tests/test_serve.py runs the demo on it).
GRADIO=6.31.0
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('gradio') != '$GRADIO')" 2>/dev/null; then
    pip_install --no-deps "gradio==$GRADIO"
    .venv/bin/python -c "import importlib.metadata as m; from packaging.requirements import Requirement as R
print('\n'.join(r.name if r.name == 'pillow' else str(r) for r in map(R, m.requires('gradio'))
                if r.marker is None or r.marker.evaluate({'extra': ''})))" >.venv/gradio-requirements.txt
    pip_install -r .venv/gradio-requirements.txt
fi
[ -z "$CHROMIUM_PID" ] || wait "$CHROMIUM_PID" || { echo "setup: apt-get install chromium failed" >&2; exit 1; }
.venv/bin/python -c "import bcos_zoo, torch; print('bcos-zoo', bcos_zoo.__version__, 'torch', torch.__version__)"
