"""Speaker adapters: what they do with more audio than anyone should send."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from device.adapters.speaker import MAX_QUEUED_S, WavSpeaker
from device.core.audio import CLOUD_RATE


async def test_queued_reply_audio_is_capped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    speaker = WavSpeaker(tmp_path / "out.wav", jitter_ms=60, paced=True)
    speaker.attach(lambda ev: None)
    second = bytes(2 * CLOUD_RATE)
    with caplog.at_level(logging.WARNING):
        for _ in range(MAX_QUEUED_S + 20):  # nothing plays meanwhile: the writer is not running
            speaker.play("r1", "i1", "final_answer", second)
    assert speaker._buffer.buffered_samples == MAX_QUEUED_S * CLOUD_RATE
    assert len([m for m in caplog.messages if "dropping the rest" in m]) == 1
    speaker.close()


def test_a_flood_of_one_sample_items_is_capped_by_count_not_only_by_length() -> None:
    from device.adapters.speaker import MAX_SEGMENTS, WavSpeaker

    speaker = WavSpeaker(None, 60, paced=False)
    for n in range(MAX_SEGMENTS + 500):
        speaker.play("r", f"i{n}", "final_answer", b"\x01\x00")
    assert speaker._buffer.segments == MAX_SEGMENTS
