"""``python -m fluxbee`` is the ``fluxbee`` command."""

from fluxbee.cli import main

main()
