"""Check functions for the book's exercises, one module per chapter (``ch01``, ``ch02``, ...).

A check takes the student's answer and either prints a short confirmation or raises
:class:`ExerciseFailed` (an ``AssertionError``) whose message says what is wrong and gives a hint.
The same functions grade submitted notebooks (course assignments).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["ExerciseFailed", "passed", "require", "require_function", "call_student"]


class ExerciseFailed(AssertionError):
    """Raised by a check: the message says what is wrong and how to fix it."""


def passed(name: str, detail: str = "") -> None:
    """Print the success line of a check."""
    print(f"✓ {name}: correct{' — ' + detail if detail else ''}")


def require(condition: bool, problem: str, hint: str) -> None:
    """Raise :class:`ExerciseFailed` with ``problem`` and ``hint`` unless ``condition`` holds."""
    if not condition:
        raise ExerciseFailed(f"{problem}\nHint: {hint}")


def require_function(fn: Any, name: str, signature: str) -> None:
    """Fail helpfully unless ``fn`` is a function (students often pass its result, or nothing)."""
    require(callable(fn), f"expected your function `{name}`, got {fn!r} ({type(fn).__name__})",
            f"define `def {name}{signature}: ...` in the cell above, run it, and pass the function itself "
            f"(no parentheses) to the check.")


def call_student(fn: Callable, name: str, *args,
                 hint: str = "run your function on the example of the exercise statement first.", **kwargs) -> Any:
    """Call the student's function, turning any exception (a stub's NotImplementedError too) into ExerciseFailed."""
    try:
        return fn(*args, **kwargs)
    except ExerciseFailed:
        raise
    except NotImplementedError as err:
        raise ExerciseFailed(f"`{name}` is not written yet (it raised NotImplementedError)\n"
                             f"Hint: replace the `raise NotImplementedError` line with your solution.") from err
    except Exception as err:  # noqa: BLE001 - any failure of the student's code is reported, not re-raised
        raise ExerciseFailed(f"calling `{name}` raised {type(err).__name__}: {err}\nHint: {hint}") from err
