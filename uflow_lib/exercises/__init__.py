"""Check functions for the book's exercises, one module per chapter (``ch01``, ``ch02``, ...).

A check takes the student's answer and either prints a short confirmation or raises
:class:`ExerciseFailed` (an ``AssertionError``) whose message says what is wrong and gives a hint.
The same functions grade submitted notebooks (course assignments).

Hints come in tiers: a hint for a recognised mistake says what that mistake is; otherwise the hint is conceptual,
and the formula or code (:func:`tiered`) appears only from the third failed attempt at the same exercise on
(the kernel counts the attempts, :func:`counts_attempts`). Success lines never print the answer, and numbers in a
failure message are printed with as many digits as it takes to tell them apart (:func:`apart`).
"""

from __future__ import annotations

import functools
import math
import operator
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

__all__ = ["ExerciseFailed", "passed", "require", "require_function", "call_student", "as_finite_number",
           "as_integer", "apart", "tiered", "counts_attempts", "failed_attempts", "reset_attempts",
           "FORMULA_FROM_ATTEMPT"]

#: The failed attempt from which a conceptual hint also shows the formula or code.
FORMULA_FROM_ATTEMPT = 3
_FAILED: Counter = Counter()  # exercise name -> failed attempts so far, in this kernel
_CURRENT: list[str] = []  # the exercise whose check is running (a stack: checks do not nest, but stay safe)
_F = TypeVar("_F", bound=Callable[..., None])


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
        out = None if value is None or isinstance(value, (str, bytes)) else float(np.asarray(value).item())
    except (TypeError, ValueError):
        out = None
    require(out is not None, f"{call} returned {value!r} ({type(value).__name__}), expected one number",
            "return a single number (not None, a list or an array of several values); did you forget `return`?")
    require(math.isfinite(out), f"{call} returned {out}, expected a finite number", not_finite_hint)
    return out


def reset_attempts() -> None:
    """Forget every failed attempt (a fresh kernel; used by the tests)."""
    _FAILED.clear()


def failed_attempts(name: str) -> int:
    """How many times the check of exercise ``name`` has failed in this kernel."""
    return _FAILED[name]


def counts_attempts(name: str) -> Callable[[_F], _F]:
    """Decorator for a check: count its failures, so that :func:`tiered` hints know the attempt number."""

    def wrap(check: _F) -> _F:
        @functools.wraps(check)
        def counted(*args: Any, **kwargs: Any) -> None:
            _CURRENT.append(name)
            try:
                return check(*args, **kwargs)
            except ExerciseFailed:
                _FAILED[name] += 1
                raise
            finally:
                _CURRENT.pop()

        return counted  # type: ignore[return-value]

    return wrap


def tiered(concept: str, formula: str) -> str:
    """The fallback hint: ``concept`` on the first failed attempts, with ``formula`` from the third one on."""
    attempt = (_FAILED[_CURRENT[-1]] if _CURRENT else FORMULA_FROM_ATTEMPT) + 1
    if attempt >= FORMULA_FROM_ATTEMPT:
        return f"{concept} {formula}"
    return f"{concept} (From failed attempt {FORMULA_FROM_ATTEMPT} on, this hint also shows the formula.)"


def apart(got: float, want: float, min_digits: int = 6) -> tuple[str, str]:
    """``got`` and ``want`` printed with the fewest significant digits (at least ``min_digits``) that differ."""
    got, want = float(got), float(want)
    for digits in range(min_digits, 18):
        a, b = f"{got:.{digits}g}", f"{want:.{digits}g}"
        if a != b:
            return a, b
    return repr(got), repr(want)


def as_integer(value: Any) -> int | None:
    """``value`` as an int when it is integer-like (int, numpy integer, integer 0-d array or tensor), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        pass
    try:
        if value.ndim == 0 and not (value.dtype.is_floating_point if hasattr(value.dtype, "is_floating_point")
                                    else np.issubdtype(value.dtype, np.floating)):
            return int(value.item())
    except (AttributeError, TypeError, ValueError):
        pass
    return None
