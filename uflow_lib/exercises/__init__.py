"""Check functions for the book's exercises, one module per chapter (``ch01``, ``ch02``, ...).

A check takes the student's answer and either prints a short confirmation or raises
:class:`ExerciseFailed` (an ``AssertionError``) whose message says what is wrong and gives a hint.
The same functions grade submitted notebooks (course assignments).
"""

from __future__ import annotations

__all__ = ["ExerciseFailed", "passed", "require"]


class ExerciseFailed(AssertionError):
    """Raised by a check: the message says what is wrong and how to fix it."""


def passed(name: str, detail: str = "") -> None:
    """Print the success line of a check."""
    print(f"✓ {name}: correct{' — ' + detail if detail else ''}")


def require(condition: bool, problem: str, hint: str) -> None:
    """Raise :class:`ExerciseFailed` with ``problem`` and ``hint`` unless ``condition`` holds."""
    if not condition:
        raise ExerciseFailed(f"{problem}\nHint: {hint}")
