"""voice-device: a hands-free voice assistant for the Raspberry Pi."""

__version__ = "0.1.0"
