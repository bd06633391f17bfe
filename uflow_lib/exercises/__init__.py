"""Check functions for the book's exercises, one module per chapter (``ch01``, ``ch02``, ...).

A check takes the student's answer and either prints a short confirmation or raises
:class:`ExerciseFailed` (an ``AssertionError``) whose message says what is wrong and gives a hint.
The same functions grade submitted notebooks (course assignments).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["ExerciseFailed", "passed", "require", "require_function", "call_student", "as_finite_number"]


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


def as_finite_number(value: Any, call: str, not_finite_hint: str) -> float:
    """The student's return value (a number, 0-d array or one-element tensor) as a finite float, or a helpful failure."""
    try:
        value = value.detach() if hasattr(value, "detach") else value  # a torch tensor
        out = float(np.asarray(value).item()) if value is not None else None
    except (TypeError, ValueError):
        out = None
    require(out is not None, f"{call} returned {value!r} ({type(value).__name__}), expected one number",
            "return a single number (not None, a list or an array of several values); did you forget `return`?")
    require(math.isfinite(out), f"{call} returned {out}, expected a finite number", not_finite_hint)
    return out
