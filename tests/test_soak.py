"""A short soak in CI (`voice-device bench soak` runs 500): conversations of every kind with
faults and barge-ins, each back to idle, and nothing piling up."""

from __future__ import annotations

from pathlib import Path

from device.bench.soak import KINDS, soak


async def test_a_short_soak_returns_to_idle_every_time_and_leaks_nothing(tmp_path: Path) -> None:
    r = await soak(45, seed=3, tmp=tmp_path)
    assert r.stuck == [] and r.conversations == 45
    assert set(r.kinds) == set(KINDS)  # every kind came up
    assert r.missed_wakes == 0
    assert r.barge_ins > 0 and sum(r.errors.values()) > 0  # the rough parts happened
    assert r.states["idle"] >= 45 - r.kinds["mute"]
    # nothing piles up: once the last connection is gone at both ends, exactly the file
    # descriptors, threads and tasks there were after the warm-up (a stalled emulator
    # connection that was never let go of showed up here as one more of each), memory flat
    for key in ("threads", "fds", "tasks"):
        assert r.end[key] == r.warm[key], (key, r.warm, r.end)
    assert r.end["rss_mb"] - r.warm["rss_mb"] < 8
