"""Moved to :mod:`fluxbee.dataplane.shm.identity_jsid`; this name stays so that existing imports keep working."""

from fluxbee.dataplane.shm.identity_jsid import *  # noqa: F403
from fluxbee.dataplane.shm.identity_jsid import __all__ as __all__
