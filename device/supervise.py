"""Device supervision: the microphone and the speaker, watched and brought back.

A microphone that fails or goes away shows the error until it is back, tried again with the
project's one retry policy (`core.backoff`, as the cloud is); a speaker that hangs or goes
away mid-reply ends the reply instead of the device, and is opened afresh. Overflows (audio
lost because the CPU fell behind) are counted and logged at most once a minute.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

from .adapters.mic import Mic, MicFailure, PyAudioMic, WavMic
from .adapters.portaudio import DeviceNotFound, find_device, reinitialize
from .adapters.room import Room
from .adapters.speaker import PyAudioSpeaker, Speaker, WavSpeaker
from .adapters.systemd import Notifier
from .config import Config
from .core import states as st
from .core.audio import ResponsePlayed
from .core.backoff import BackoffPolicy

log = logging.getLogger(__name__)

MIC_RETRY = BackoffPolicy(initial_s=0.5, max_s=30.0)
"""How often a lost microphone is looked for again."""
SPEAKER_RETRY = BackoffPolicy(initial_s=0.5, max_s=4.0)
"""How often a speaker missing at start-up is looked for (with --wait-for-devices)."""
SPEAKER_WAIT_S = 30
"""With --wait-for-devices, how long a speaker missing at start-up is looked for (a USB
speaker still being set up at boot) before the daemon gives up on it as it would without."""
OVERFLOW_LOG_S = 60


class Supervisor:
    def __init__(
        self,
        notifier: Notifier,
        handle: Callable[[st.Input], None],
        stopped: asyncio.Event,
        rng: random.Random | None = None,
    ) -> None:
        self.notifier = notifier
        self._handle = handle
        self._stopped = stopped
        self._random = (rng or random.Random()).random
        self.mic: Mic | None = None
        self.speaker: Speaker | None = None
        self.mic_failure: Exception | None = None
        """Why the microphone is gone, until it is back."""
        self.speaker_failures = 0
        self._speaker_suspect = False
        """A failure was reported and no response has played to its end since."""
        self._overflows_logged = 0
        self._overflow_log_t = -float(OVERFLOW_LOG_S)

    # -- the microphone ---------------------------------------------------------------------

    async def recover_mic(self) -> None:
        """Error state, then try to get the microphone back, with backoff, until it is."""
        failure, mic = self.mic_failure, self.mic
        assert failure is not None and mic is not None
        log.warning("%s; trying to get it back", failure)
        self._handle(st.MicLost(str(failure)))
        t0, failures = time.monotonic(), 0
        absent = isinstance(failure, DeviceNotFound) or not isinstance(failure, MicFailure)
        while not self._stopped.is_set():
            if absent:
                # waiting for a microphone that is not there is not a hang: no restart. A
                # stalled capture, or a close stuck in PortAudio, does not feed the watchdog.
                self.notifier.audio_alive()
            try:
                await mic.reopen(self.refresh_devices)
                break
            except (MicFailure, DeviceNotFound, OSError) as e:
                absent = not isinstance(e, MicFailure)
                log.debug("microphone not back yet: %s", e)
                self.notifier.status(f"error: {failure}; retrying")
                failures += 1
                await asyncio.sleep(MIC_RETRY.delay(failures, self._random()))
        else:
            return
        self.mic_failure = None
        log.info("microphone '%s' back after %.0f s", mic.name, time.monotonic() - t0)
        self._handle(st.MicBack())

    async def refresh_devices(self) -> None:
        """Re-enumerate PortAudio's devices so a re-plugged microphone is found again."""
        if not isinstance(self.speaker, PyAudioSpeaker):
            await asyncio.to_thread(reinitialize)
            return
        await asyncio.to_thread(self.speaker.suspend)
        try:
            await asyncio.to_thread(reinitialize)
        finally:
            await asyncio.to_thread(self.speaker.resume)

    def report_overflows(self) -> None:
        """Audio the microphone lost because the loop fell behind: counted, logged at most
        once a minute, never fatal."""
        if self.mic is None:
            return
        lost = self.mic.overflows + getattr(self.mic, "dropped", 0)
        now = time.monotonic()
        if lost > self._overflows_logged and now - self._overflow_log_t > OVERFLOW_LOG_S:
            log.warning("microphone overflowed %d times so far (the CPU fell behind)", lost)
            self._overflows_logged, self._overflow_log_t = lost, now

    # -- the speaker ------------------------------------------------------------------------

    async def wait_for_speaker(self, spec: str) -> None:
        """Look for a missing speaker again, with backoff, for up to SPEAKER_WAIT_S,
        restarting PortAudio to see new devices (nothing is open yet, so it can be). If it
        does not come, building the daemon names it and it exits 78, as without
        --wait-for-devices: a device that cannot answer is not left half-running."""
        deadline = time.monotonic() + SPEAKER_WAIT_S
        failures = 0
        while True:
            try:
                await asyncio.to_thread(find_device, spec, "output")
            except DeviceNotFound as e:
                if time.monotonic() >= deadline:
                    return
                if not failures:
                    log.warning("%s; looking for it for up to %d s", e, SPEAKER_WAIT_S)
                    self.notifier.status(f"waiting for the speaker: {e}")
                failures += 1
                await asyncio.sleep(SPEAKER_RETRY.delay(failures, self._random()))
                await asyncio.to_thread(reinitialize)
                continue
            if failures:
                log.info("speaker '%s' found", spec)
            return

    def check_speaker(self) -> None:
        """A speaker that hangs or goes away mid-reply must not leave the device answering
        for ever: show the error, end the conversation, and open the output afresh."""
        assert self.speaker is not None
        problem = self.speaker.failure(time.monotonic())
        if problem is None:
            return
        self.speaker_failures += 1
        self._speaker_suspect = True
        self.speaker.recover()
        self._handle(st.SpeakerFailed(f"{problem}; reopening it"))

    def played(self, ev: object) -> None:
        """A response played to its end: a speaker that had failed works again."""
        if isinstance(ev, ResponsePlayed) and self._speaker_suspect:
            assert self.speaker is not None
            self._speaker_suspect = False
            log.info("speaker '%s' plays again", self.speaker.name)


def audio_devices(
    cfg: Config, room: Room | None, input_wav: Path | None, output_wav: Path | None, fast: bool
) -> tuple[Mic, Speaker]:
    """The microphone and speaker to run with: a simulated room's, WAV files, or ALSA's."""
    a = cfg.audio
    if room is not None:
        room.speaker.volume = a.volume
        return room.mic, room.speaker
    mic: Mic = (
        WavMic(input_wav, paced=not fast)
        if input_wav
        else PyAudioMic(a.input_device, a.input_rate, a.input_channels, a.input_channel)
    )
    speaker: Speaker = (
        WavSpeaker(output_wav, a.jitter_ms, paced=not fast, volume=a.volume)
        if output_wav
        else PyAudioSpeaker(a.output_device, a.jitter_ms, a.volume)
    )
    return mic, speaker
