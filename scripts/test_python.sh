#!/usr/bin/env bash
# The Python package's tests (tests/python; the CUDA ones skip on machines without a GPU). scripts/test.sh
# calls this after scripts/setup.sh, which installs the package through scripts/setup_python.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import vmonarch" 2>/dev/null; then
    scripts/setup_python.sh
fi
exec "$PY" -m pytest tests/python -q -p no:cacheprovider -rs
