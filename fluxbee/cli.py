"""The ``fluxbee`` command."""


def main() -> None:
    raise SystemExit("fluxbee: no commands yet")
