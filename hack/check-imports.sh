#!/usr/bin/env bash
# import-linter (grimp) cannot follow setup.py's folder mapping (dataplane/ -> fluxbee.dataplane),
# and the editable-install finder always wins over PYTHONPATH. So check the layer contracts on a
# throw-away copy laid out as the installed package, with site-packages' .pth hooks switched off
# (python -S) and the working directory inside the copy (the repo root's operator/ folder would
# shadow the stdlib module of that name).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=${PYTHON:-$root/.venv/bin/python}
stage=build/imports
rm -rf "$stage"
mkdir -p "$stage"
cp -r fluxbee "$stage/fluxbee"
cp -r dataplane "$stage/fluxbee/dataplane"
cp -r operator "$stage/fluxbee/operator"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
site=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cd "$stage"
PYTHONPATH="$root/$stage:$site" exec "$python" -S -c \
  "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())" \
  "$root/.importlinter" "$@"
