"""Talking to systemd: sd_notify (READY, STATUS, WATCHDOG, RELOADING, STOPPING) and journald
logging with structured fields."""

from __future__ import annotations

import logging
import os
import re
import sys
import time

log = logging.getLogger(__name__)


class Notifier:
    """sd_notify through systemd-python; does nothing when not started by systemd."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and mine else None
        self._last_watchdog = 0.0
        self._status = ""
        self._failed = False

    def _send(self, msg: str) -> None:
        if not self.enabled:
            return
        from systemd import daemon  # type: ignore[attr-defined]

        try:
            daemon.notify(msg)
        except OSError as e:  # systemd went away (or a test's socket did): never fatal
            if not self._failed:
                self._failed = True
                log.warning("cannot notify systemd: %s", e)

    def ready(self, status: str) -> None:
        self._status = status
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        if status != self._status:
            self._status = status
            self._send(f"STATUS={status}")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping")

    def reloading(self) -> None:
        """Before re-reading the configuration; `ready()` says when it is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the configuration")

    def audio_alive(self) -> None:
        """Called as microphone frames arrive, while the microphone is muted (by the loop's
        ticker) and while waiting for a microphone that is not there: never while a capture
        stalls or a PortAudio call hangs, so those get the service restarted."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_watchdog >= self.watchdog_interval:
            self._last_watchdog = now
            self._send("WATCHDOG=1")


def under_journal() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream or ":" not in stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    dev, ino = stream.split(":", 1)
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


CONTEXT: dict[str, str] = {}
"""Journal fields every log entry carries, kept current by the app: STATE, SESSION_ID."""


class AddContext(logging.Filter):
    """Puts the device's state and session on every record, as journal fields, so that
    `journalctl -u voice-device STATE=error` or `SESSION_ID=sess_…` finds what happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in CONTEXT.items():
            if value and not hasattr(record, key):
                setattr(record, key, value)
        return True


def setup_logging(debug: bool, secrets: list[str]) -> None:
    """journald when run by systemd, else plain stderr; secrets redacted everywhere."""
    root = logging.getLogger()
    root.handlers.clear()
    handler: logging.Handler
    if under_journal():
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER="voice-device")
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(AddContext())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(REDACT)
    REDACT.set(secrets)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        # websockets logs handshake headers at DEBUG; keep it at INFO unless asked.
        logging.getLogger("websockets").setLevel(logging.INFO)
    logging.getLogger("device.alsa").setLevel(logging.INFO)


class RedactSecrets(logging.Filter):
    """Replaces known secrets, and any authentication header's value, with ***.

    Known secrets cover the API key wherever it might be quoted; the header rule also
    covers Entra tokens, which change and are never known in advance (websockets prints
    handshake headers at DEBUG).
    """

    HEADER = re.compile(r"(?im)^(\W*(?:api-key|authorization)\s*:\s*)\S.*$")

    MIN_SECRET = 8
    """Shorter strings are not replaced: a one-letter test key would garble every line."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.set(secrets)

    def set(self, secrets: list[str]) -> None:
        self.secrets = [s for s in secrets if len(s) >= self.MIN_SECRET]

    def add(self, secret: str) -> None:
        """A key read again (a reload): redacted along with the old one."""
        if len(secret) >= self.MIN_SECRET and secret not in self.secrets:
            self.secrets.append(secret)

    def clean(self, text: str) -> str:
        """`text` without secrets, for a log or the events log."""
        for s in self.secrets:
            text = text.replace(s, "***")
        return self.HEADER.sub(r"\1***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        # one record, one line: text from a server cannot forge log lines (CR, LF, ESC, NUL)
        clean = escape(self.clean(msg))
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.clean(record.exc_text)
        return True


CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def escape(text: str) -> str:
    """Control characters as escapes (\\n, \\x1b), and text any encoding can carry."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


REDACT = RedactSecrets([])
"""The one redaction filter on the log handler; a reload adds the key it reads."""
