#!/usr/bin/env bash
# Lint the Helm chart with the real Helm library (helm-sdkpy, Python >= 3.12) in .venv-helm.
# Self-contained: creates .venv-helm on first use.  Exit status non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-helm
if [[ ! -x "$venv/bin/python" ]]; then
    py=""
    if PYENV_VERSION=3.12.1 python3.12 -c 'import sys' >/dev/null 2>&1; then
        py="python3.12"
    elif [[ -x "$HOME/.pyenv/versions/3.12.1/bin/python" ]]; then
        py="$HOME/.pyenv/versions/3.12.1/bin/python"
    else
        echo "check-chart: need Python 3.12 for helm-sdkpy (pyenv 3.12.1 or python3.12)" >&2
        exit 2
    fi
    # -I: the repo root holds a folder named `operator` that would shadow the stdlib module.
    (cd / && PYENV_VERSION=3.12.1 "$py" -I -m venv "$OLDPWD/$venv")
    (cd / && "$OLDPWD/$venv/bin/python" -I -m pip install --quiet helm-sdkpy kubernetes-validate pyyaml)
fi
exec "$venv/bin/python" -I hack/check_chart.py
