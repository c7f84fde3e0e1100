"""Several devices, one answer: the claims' rules (simulated exactly, any timing), then two
and three real daemons on a real broker hearing the same words at different levels."""

from __future__ import annotations

import heapq
import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from device.bench.arbitration import run_condition
from device.core.arbitration import (
    LATE_WAKE_S,
    Board,
    Claim,
    Taken,
    Verdict,
    decode,
    encode,
)

WINDOW = 0.15


def test_claims_travel_as_json_and_anything_else_is_ignored() -> None:
    claim = Claim.make("kitchen", -23.456, 0.98765, 3, 1234)
    assert decode(encode(claim)) == claim == Claim("kitchen", -23.5, 0.988, 3, 1234)
    assert decode(encode(Taken("hall", 7))) == Taken("hall", 7)
    hostile = [
        b"",
        b"{",
        b"[]",
        b"null",
        b'{"claim": "x", "level_db": "loud", "score": 1, "seq": 1}',
        b'{"claim": "x", "level_db": -20, "score": 2, "seq": 1}',
        b'{"claim": "x", "level_db": 1e308, "score": 0.5, "seq": 1}',
        b'{"claim": "", "level_db": -20, "score": 0.5, "seq": 1}',
        b'{"claim": "x", "level_db": -20, "score": 0.5, "seq": true}',
        b'{"taken": 5, "seq": 1}',
        b"\xff\xfe",
        b'{"claim": "x", "level_db": -20, "score": 0.5, "seq": 1, "pad": "' + b"a" * 600 + b'"}',
    ]
    assert [decode(h) for h in hostile] == [None] * len(hostile)


def test_the_louder_claim_wins_then_the_surer_then_the_id() -> None:
    near, far = Claim.make("b", -20, 0.9, 1), Claim.make("a", -26, 0.99, 1)
    assert max(near, far, key=Claim.rank) is near
    same = Claim.make("a", -20, 0.95, 1)
    assert max(near, same, key=Claim.rank) is same
    assert max(Claim.make("a", -20, 0.9, 1), near, key=Claim.rank) is near


def simulate(wakes: list[float], levels: list[float], latency: list[list[float]]) -> list[Verdict]:
    """Devices that woke at `wakes` (seconds) with speech at `levels`; a message from i
    reaches j after `latency[i][j]`. Each decides on its Board exactly as the daemon does:
    at each arrival (a loss is known at once) and at the end of its window."""
    n = len(wakes)
    boards = [Board(f"d{i}", WINDOW) for i in range(n)]
    claims = [Claim.make(f"d{i}", levels[i], 0.9, 1) for i in range(n)]
    verdicts: list[Verdict | None] = [None] * n
    order = itertools.count()
    queue: list[tuple[float, int, str, int, object]] = []
    for i, t in enumerate(wakes):
        heapq.heappush(queue, (t, next(order), "wake", i, None))
    while queue:
        t, _, kind, i, msg = heapq.heappop(queue)
        b = boards[i]
        if kind == "wake":
            b.open(claims[i], t)
            for j in range(n):
                if j != i:
                    heapq.heappush(queue, (t + latency[i][j], next(order), "msg", j, claims[i]))
            heapq.heappush(queue, (t + WINDOW, next(order), "deadline", i, None))
            continue
        if kind == "msg":
            assert isinstance(msg, Claim | Taken)
            b.hear(msg, t)
        if verdicts[i] is not None or b.own is None:
            continue
        v = b.verdict(t, final=kind == "deadline")
        if v is None:
            continue
        verdicts[i] = v
        b.close()
        if v.won:
            for j in range(n):
                if j != i:
                    taken = Taken(f"d{i}", 1)
                    heapq.heappush(queue, (t + latency[i][j], next(order), "msg", j, taken))
    assert all(v is not None for v in verdicts)
    return [v for v in verdicts if v is not None]


@settings(max_examples=400, deadline=None)
@given(
    n=hs.integers(2, 4),
    data=hs.data(),
)
def test_exactly_one_device_answers_whenever_the_broker_is_quick_enough(
    n: int, data: hs.DataObject
) -> None:
    """With every message delivered within half the window, devices whose wakes are less
    than `LATE_WAKE_S` apart agree on exactly one: the loudest, when their wakes are close
    enough for each to see the others' claims."""
    top_latency = WINDOW / 2
    wakes = data.draw(hs.lists(hs.floats(0, LATE_WAKE_S - 0.01), min_size=n, max_size=n))
    levels = data.draw(
        hs.lists(hs.floats(-60, -10), min_size=n, max_size=n, unique_by=lambda x: round(x, 1))
    )
    latency = [
        data.draw(hs.lists(hs.floats(0.0005, top_latency), min_size=n, max_size=n))
        for _ in range(n)
    ]
    verdicts = simulate(wakes, levels, latency)
    winners = [i for i, v in enumerate(verdicts) if v.won]
    assert len(winners) == 1, (wakes, levels, verdicts)
    if max(wakes) - min(wakes) < WINDOW - top_latency:  # everyone saw everyone's claim
        assert winners == [max(range(n), key=lambda i: round(levels[i], 1))]
    # a device that lost names one that outranked it (not itself)
    assert all(v.winner != f"d{i}" for i, v in enumerate(verdicts) if not v.won)


def test_a_device_alone_goes_ahead_after_the_window_and_a_late_far_one_yields() -> None:
    [alone] = simulate([0.0], [-30], [[0.0]])
    assert alone == Verdict(True, "d0", "alone", 0)
    # the far device woke 400 ms later (its score crossed the threshold late) although it
    # heard the words louder: the near one has already answered, so it yields
    first, late = simulate([0.0, 0.4], [-30, -20], [[0, 0.01], [0.01, 0]])
    assert first.won and first.why == "alone"
    assert not late.won and late.why == "taken" and late.winner == "d0"


# -- real daemons ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 3])
def test_real_daemons_hearing_the_same_words_open_one_session(tmp_path: Path, devices: int) -> None:
    """Each trial the nearest device changes; every trial exactly one session, the
    nearest device's (the others go back to idle)."""
    c = run_condition(tmp_path, devices, devices, "ok")
    for t in c.trials:
        assert sorted(t.woke) == [f"dev{i}" for i in range(devices)], t
        assert t.sessions == [t.loudest], t
        # the others showed "handled elsewhere" (and never the listening light)
        for name, lights in t.lights.items():
            if name != t.loudest:
                assert "elsewhere" in lights and "listening" not in lights, (name, lights)
            else:
                assert "elsewhere" not in lights and "listening" in lights, (name, lights)


@pytest.mark.slow
def test_with_the_broker_gone_each_device_decides_alone_at_once(tmp_path: Path) -> None:
    c = run_condition(tmp_path, 2, 2, "gone")
    for t in c.trials:
        assert sorted(t.sessions) == ["dev0", "dev1"], t  # nobody to agree with
        assert all(w < 50 for w in t.waited_ms.values()), t  # no window without a broker
