"""A local realtime server speaking the Azure GA protocol, for the demo and the tests."""

from .server import Emulator, Scenario, serve_forever

__all__ = ["Emulator", "Scenario", "serve_forever"]
