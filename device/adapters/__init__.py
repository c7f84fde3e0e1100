"""Thin edges around real libraries: PortAudio, webrtcvad, microWakeWord, gpiozero,
websockets, systemd."""
