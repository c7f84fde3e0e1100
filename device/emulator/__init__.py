"""A local realtime server speaking the Azure protocol, for the demo and the tests."""

from .scenario import Faults, Scenario, load_scenario
from .server import Emulator, serve_forever

__all__ = ["Emulator", "Faults", "Scenario", "load_scenario", "serve_forever"]
