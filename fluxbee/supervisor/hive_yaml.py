"""``hive.yaml`` for nodes built with the original SDKs.

Why: the original SDKs read ``<config dir>/hive.yaml`` before they connect and refuse to start
without its ``hive_id`` (they append ``@<hive_id>`` to the node name themselves). Their config dir
is ``/etc/fluxbee`` by convention, and the original's programs take another one from
``JSR_CONFIG_DIR``. So ``fluxbee up`` writes the file and tells every node where it is:

* config dir: ``/etc/fluxbee`` when the run dir is the system one (``/var/run/fluxbee``, i.e. a
  root hive), otherwise ``<run dir>/config`` (per-user hives and tests never touch ``/etc``);
* every declared node gets ``JSR_CONFIG_DIR=<config dir>`` in its environment;
* keys written: ``hive_id`` and ``role`` (``motherbee``/``worker``, from the Hive resource).

A ``hive.yaml`` that ``fluxbee up`` did not write (no :data:`MARKER` line) is never overwritten:
if its ``hive_id`` is the same it is left as it is, otherwise the hive refuses to start and says
which file to fix. Pure except :func:`write`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import yaml

CONFIG_DIR_ENV: Final = "JSR_CONFIG_DIR"
SYSTEM_RUN_DIR: Final = Path("/var/run/fluxbee")
SYSTEM_CONFIG_DIR: Final = Path("/etc/fluxbee")
FILE_NAME: Final = "hive.yaml"
MARKER: Final = "# written by fluxbee up"


class HiveYamlError(Exception):
    """A ``hive.yaml`` that is not ours holds another hive id."""

    def __init__(self, path: Path, found: object, hive_id: str) -> None:
        super().__init__(f"{path} was not written by fluxbee up and names hive_id {found!r}, not {hive_id!r}; "
                         f"fix or remove it (nodes built with the original SDKs read their hive id from it)")
        self.path = path
        self.found = found
        self.hive_id = hive_id


def config_dir(run_dir: Path) -> Path:
    """Where a hive keeps its ``hive.yaml`` (see the module docstring)."""
    if Path(os.path.abspath(run_dir)) == SYSTEM_RUN_DIR:
        return SYSTEM_CONFIG_DIR
    return run_dir / "config"


def render(hive_id: str, role: str) -> str:
    body = yaml.safe_dump({"hive_id": hive_id, "role": role}, sort_keys=False)
    return f"{MARKER} for nodes built with the original SDKs; rewritten at every start.\n{body}"


def write(directory: Path, hive_id: str, role: str) -> Path:
    """Write ``directory/hive.yaml`` atomically unless a file we did not write is there (see above)."""
    path = directory / FILE_NAME
    text = render(hive_id, role)
    try:
        current = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        current = None
    if current == text:
        return path
    if current is not None and not current.startswith(MARKER):
        try:
            found = (yaml.safe_load(current) or {}).get("hive_id")
        except (yaml.YAMLError, AttributeError):
            found = None
        if found == hive_id:
            return path
        raise HiveYamlError(path, found, hive_id)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
