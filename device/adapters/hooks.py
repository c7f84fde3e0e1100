"""Event hooks: a user's command run on state changes (lights, home automation, logging).

The command runs through /bin/sh with VOICE_DEVICE_STATE, VOICE_DEVICE_PREVIOUS_STATE and
VOICE_DEVICE_REASON set — never audio, transcripts or secrets: it gets a clean environment
(PATH, HOME, the locale), not the daemon's, which holds the API key. Hooks run one at a time, in
order, off the event loop's critical path: a slow hook delays the next hook, never the
device. One that runs past TIMEOUT_S is killed; a backlog past MAX_QUEUED drops the oldest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque

log = logging.getLogger(__name__)


PASSED_ON = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME")
"""All a hook inherits of the daemon's environment: never its secrets (the API key, the
credentials directory), whatever else the service was given."""
MAX_VALUE = 200


def _safe(value: str) -> str:
    """A value an environment can hold and a log can show: no NUL, no lone surrogate, no
    control character, and not too long (a server's error code ends up here)."""
    text = value.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text[:MAX_VALUE]


def hook_environment(variables: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k in PASSED_ON}
    base.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return {**base, **{k: _safe(v) for k, v in variables.items()}}


class Hooks:
    TIMEOUT_S = 10.0
    MAX_QUEUED = 32

    def __init__(self, command: str, states: list[str]) -> None:
        self.command = command
        self.states = set(states)
        self._queue: deque[dict[str, str]] = deque(maxlen=self.MAX_QUEUED)
        self._wake = asyncio.Event()

    def state_changed(self, state: str, previous: str, reason: str) -> None:
        if not self.command or (self.states and state not in self.states):
            return
        if len(self._queue) == self.MAX_QUEUED:
            log.warning("hook command is too slow: dropping the oldest state change")
        self._queue.append(
            {
                "VOICE_DEVICE_STATE": state,
                "VOICE_DEVICE_PREVIOUS_STATE": previous,
                "VOICE_DEVICE_REASON": reason,
            }
        )
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._run_one(self._queue.popleft())

    async def _run_one(self, env: dict[str, str]) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                self.command,
                env=hook_environment(env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except (OSError, ValueError) as e:
            log.warning("hook command could not start: %s", e)
            return
        try:
            async with asyncio.timeout(self.TIMEOUT_S):
                _, err = await proc.communicate()
        except TimeoutError:
            log.warning("hook command killed after %g s", self.TIMEOUT_S)
            return
        finally:
            if proc.returncode is None:  # timed out, or the daemon is stopping
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(proc.wait())
        if proc.returncode != 0:
            last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            log.warning("hook command exited with %d: %s", proc.returncode, last[0][:200])
