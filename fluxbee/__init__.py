"""Fluxbee: a router for conversations between AI agents, humans and workflows."""

__version__ = "0.1.0"
