#!/usr/bin/env bash
# mypy cannot follow setup.py's folder mapping (dataplane/ -> fluxbee.dataplane), so
# type-check a staging tree of symlinks laid out as the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=build/typecheck/fluxbee
rm -rf build/typecheck
mkdir -p "$stage"
for entry in fluxbee/*; do ln -s "../../../$entry" "$stage/$(basename "$entry")"; done
ln -s ../../../dataplane "$stage/dataplane"
ln -s ../../../operator "$stage/operator"
exec "${MYPY:-.venv/bin/mypy}" "$@" build/typecheck/fluxbee
