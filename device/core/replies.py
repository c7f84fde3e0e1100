"""Which responses the device plays, and how long a model may go on calling tools.

Plain bookkeeping for the cloud link, kept here so it can be tested with plain values.
"""

from __future__ import annotations

import re

MAX_TOOL_ROUNDS = 4
"""Tool calls answered in a row for one turn; a model stuck calling tools is stopped."""


class Replies:
    def __init__(self) -> None:
        self.tool_rounds = 0
        self.discard_next = False
        """A cancel was sent before its response was created: that response is not played."""
        self._cancel_event: str | None = None

    def new_turn(self) -> None:
        """The user spoke (or typed): the tool rounds start again."""
        self.tool_rounds = 0

    def cancelled(self, active_response: str | None, event_id: str | None = None) -> None:
        """The user interrupted. With no response created yet, the next one to be created is
        the cancelled one (`event_id`: the cancel's, which an error may answer)."""
        if active_response is None:
            self.discard_next = True
            self._cancel_event = event_id

    def cancel_refused(self, event_id: str | None) -> None:
        """The server answered the cancel with an error: there was nothing to cancel, so no
        later (real) reply may be discarded in its place."""
        if event_id is not None and event_id == self._cancel_event:
            self.discard_next = False
            self._cancel_event = None

    def created(self) -> bool:
        """A response was created: False if it is the one a cancel already ended."""
        if self.discard_next:
            self.discard_next = False
            return False
        return True

    def tool_round(self, calls: int) -> bool:
        """A response ended with `calls` tool calls: True if their results are sent and
        another response asked for, False if the model has called tools for long enough
        (or called none)."""
        if not calls or self.tool_rounds >= MAX_TOOL_ROUNDS:
            return False
        self.tool_rounds += 1
        return True


def invites_reply(answer: str) -> bool:
    """Whether a final answer asks something back, so that the follow-up window should open
    (`turn.follow_up = "auto"`): a question mark in its last two sentences ("It's 4 °C.
    Want tomorrow's too?", "Which one: tea or pasta? I can cancel either."). Measured on the
    labelled answers in tests/test_replies.py."""
    text = answer.strip()
    sentences = [p for p in _SENTENCE.split(text) if p.strip()]
    return any("?" in p for p in sentences[-2:])


_SENTENCE = re.compile(r"(?<=[.!?])\s+")
