#!/usr/bin/env bash
# Set up (if needed) and run the test suite, offline, on the CPU. Without arguments: everything but the
# `slow` tests (CI runs those too, see .ci/run); with arguments, they go to pytest (e.g. -m slow, -k name).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then
    set -- -q -m "not slow"
fi
exec .venv/bin/python -m pytest "$@"
