#!/usr/bin/env bash
# Build the C fast path (dataplane/_speedups.c) with AddressSanitizer and UndefinedBehaviorSanitizer
# and run its unit tests and a mutation fuzzer against msgspec with that build. The sanitized module
# goes into a throw-away copy of the package (as in check-imports.sh: the editable-install finder
# wins over PYTHONPATH, so site hooks are off with python -S); the installed module is untouched.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=${PYTHON:-$root/.venv/bin/python}
cc=${CC:-gcc}
asan=$("$cc" -print-file-name=libasan.so)
ubsan=$("$cc" -print-file-name=libubsan.so)
if [[ ! -e $asan || ! -e $ubsan ]]; then
  echo "check-speedups: SKIPPED: $cc has no libasan/libubsan here" >&2
  exit 0
fi
stage=build/asan
rm -rf "$stage"
mkdir -p "$stage"
cp -r fluxbee "$stage/fluxbee"
cp -r dataplane "$stage/fluxbee/dataplane"
find "$stage" \( -name __pycache__ -o -name '*.so' \) -prune -exec rm -rf {} +
include=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
suffix=$("$python" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
"$cc" -shared -fPIC -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \
  -Wall -Wextra -Werror -I"$include" dataplane/_speedups.c -o "$stage/fluxbee/dataplane/_speedups$suffix"
site=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# PYTHONMALLOC=malloc: objects come from malloc, so ASan sees the bounds of every bytes object.
export LD_PRELOAD="$asan $ubsan" ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 PYTHONMALLOC=malloc
export PYTHONPATH="$root/$stage:$site" PYTHONSAFEPATH=1
"$python" -S -c "from fluxbee.dataplane import _native; import sys; sys.exit(_native.IMPLEMENTATION != 'c')"
"$python" -S -m pytest -q -p no:cacheprovider --rootdir="$root" -c "$root/pyproject.toml" \
  "$root/tests/unit/test_fastpath.py" "$root/tests/unit/test_router_fastpath.py" \
  "$root/tests/unit/test_nullpath.py" "$root/tests/unit/test_router_nullroute.py" \
  "$root/tests/unit/test_sdk_writes.py" "$root/tests/unit/test_wire.py" "$root/tests/unit/test_link_hop.py"
"$python" -S "$root/hack/fuzz_speedups.py" "${FUZZ_SEED:-$RANDOM}" "${FUZZ_COUNT:-200000}"
