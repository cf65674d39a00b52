"""Test-session settings shared by every tier."""

import os

# Subprocesses started by tests run `python -m fluxbee …` from the repo root, whose `operator/`
# folder would shadow the stdlib module if the working directory went onto sys.path.
os.environ.setdefault("PYTHONSAFEPATH", "1")
