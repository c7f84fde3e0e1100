"""Which responses the device plays, and how long a model may go on calling tools.

Plain bookkeeping for the cloud link, kept here so it can be tested with plain values.
"""

from __future__ import annotations

MAX_TOOL_ROUNDS = 4
"""Tool calls answered in a row for one turn; a model stuck calling tools is stopped."""


class Replies:
    def __init__(self) -> None:
        self.tool_rounds = 0
        self.discard_next = False
        """A cancel was sent before its response was created: that response is not played."""

    def new_turn(self) -> None:
        """The user spoke (or typed): the tool rounds start again."""
        self.tool_rounds = 0

    def cancelled(self, active_response: str | None) -> None:
        """The user interrupted. With no response created yet, the next one to be created is
        the cancelled one."""
        if active_response is None:
            self.discard_next = True

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
