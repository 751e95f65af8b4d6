#!/usr/bin/env bash
# Set up (if needed) and run the test suite, offline, on the CPU. Without arguments: everything but the
# `slow` tests (CI runs those too, see .ci/run), in one pytest-xdist worker per core (idle workers take over
# queued tests: the CLI tests dominate); with arguments, they go to pytest as they are (e.g. -m slow, -k name).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then
    set -- -q -m "not slow" -n "$(nproc)" --dist worksteal
fi
exec .venv/bin/python -m pytest "$@"
