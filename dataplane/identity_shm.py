"""Moved to :mod:`fluxbee.dataplane.shm.identity`; this name stays so that existing imports keep working."""

from fluxbee.dataplane.shm.identity import *  # noqa: F403
from fluxbee.dataplane.shm.identity import __all__ as __all__
