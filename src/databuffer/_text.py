"""Words for messages: one way to write a count, a list, a suggestion.

Only error paths and logs call these, never the per-insert or per-batch path.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Sequence
from types import FrameType

__all__ = ("closest", "join_and", "join_or", "plural", "short_repr", "stack_note")

# Nouns whose plural takes "es": batch, flush, ...
_ES = ("s", "sh", "ch", "x", "z")


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, in agreement: ``"1 item"``, ``"2 items"``, ``"0 batches"``.

    ``noun`` may be several words, the last one the noun: ``"leading item"``.
    """
    if count == 1:
        return f"1 {noun}"
    return f"{count} {noun}{'es' if noun.endswith(_ES) else 's'}"


def join_and(words: Sequence[str], conjunction: str = "and") -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``."""
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


def join_or(words: Sequence[str]) -> str:
    """``"a"``, ``"a or b"``, ``"a, b or c"``."""
    return join_and(words, "or")


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to about ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def closest(word: str, choices: Iterable[str]) -> list[str]:
    """The choices closest to a misspelt ``word`` (``difflib``): the best, and a near tie; or none."""
    import difflib  # only when a message needs it

    choices = list(choices)
    matches = difflib.get_close_matches(word, choices, n=2)
    if len(matches) == 2:
        # The second only when it is about as close (timeout: flush_ or insert_timeout),
        # not when it only shares the first's stem (maxsize: max_size, not max_size_jitter).
        best, second = (difflib.SequenceMatcher(None, word, match).ratio() for match in matches)
        if second < best - 0.1:
            del matches[1]
    return matches


def stack_note(header: str, frames: Sequence[FrameType]) -> str:
    """``header`` and the frames, outermost first, in the form of a traceback (a note of an error)."""
    summary = traceback.StackSummary.extract((frame, frame.f_lineno) for frame in frames)
    return f"{header}, most recent call last:\n{''.join(summary.format()).rstrip()}"
