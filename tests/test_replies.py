"""When does an answer invite a reply? (`turn.follow_up = "auto"`.) Measured on answers of
the kinds a kitchen assistant gives, labelled by hand: the follow-up window should open
after those that ask something back, and not after plain statements."""

from __future__ import annotations

from device.core.replies import invites_reply

INVITES = [
    "Which one should I cancel, the tea or the pasta?",
    "I can set that. How long should it be?",
    "It's four degrees and raining. Do you want tomorrow's forecast too?",
    "There are two timers: tea and pasta. Which one do you mean?",
    "Sure. What should I call it?",
    "Did you mean seven in the morning or in the evening?",
    "Paris is sunny today, 21 degrees. Anything else?",
    "Would you like me to set a timer for the eggs? Soft boiled takes about six minutes.",
    "I didn't catch the time. Could you say it again?",
    "Shall I read you the next step?",
    "Do you want it in Celsius or Fahrenheit?",
    "The recipe needs 200 grams of flour. Want the rest of the ingredients?",
]
STATEMENTS = [
    "Your tea timer is set for four minutes.",
    "It's 7:42 in the evening.",
    "Done, the volume is at 40 percent.",
    "Today looks sunny, with a high of twenty one degrees and a light breeze in the afternoon.",
    "Okay, I cancelled the pasta timer.",
    "You have no timers running.",
    "Your alarm is set for 7:30 tomorrow morning.",
    "You're welcome!",
    "Water boils at 100 degrees Celsius at sea level.",
    "A tablespoon is about fifteen millilitres.",
    "Goodbye!",
    "The tea timer has 2 minutes 10 seconds left.",
    "I asked myself why that is? No: it is simply the boiling point.",  # (a question early on)
]


def test_answers_that_ask_something_back_open_the_window_and_statements_do_not() -> None:
    opened = [a for a in INVITES if invites_reply(a)]
    closed = [a for a in STATEMENTS if not invites_reply(a)]
    # every invitation is heard; one statement with a rhetorical question in its last two
    # sentences keeps the window open (5 s, then it closes by itself): the cheaper mistake
    assert opened == INVITES
    assert len(closed) == len(STATEMENTS) - 1
    assert invites_reply("") is False
