"""What every exercise checker shares: run the learner's function without letting a mistake stop
the notebook, compare, and print one verdict line ("OK: ..." or "not yet: <hint>").

A checker names the mistake when it can: it recomputes the answers that the likely wrong solutions
give (`mistake`), and prints the hint of the one the learner's answer equals.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor, nn

CHANGED_INPUT = "your function changed its input"
# Notebooks 04-06 start their exercises as stubs and store this line as the cell's output, so a
# checker prints it alone there (the notebook's prose states the task).
STUB = "the function is still a stub (it raises NotImplementedError)"


def _inputs(fn: Callable[..., Any], args: tuple, kwargs: dict) -> list[tuple[str, Any]]:
    """(how to name it in a hint, value) for each argument, by the learner's parameter names."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    named = []
    for i, value in enumerate(args):
        ok = i < len(params) and params[i].kind in positional
        named.append((f"`{params[i].name}`" if ok else f"(argument {i + 1})", value))
    return named + [(f"`{k}`", v) for k, v in kwargs.items()]


def _tensors(value: Any) -> Iterable[Tensor]:
    """The tensors inside nested lists, tuples and dicts (a module's own parameters are not inputs)."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _unchanged(now: Tensor, before: Tensor) -> bool:
    if now.shape != before.shape or now.dtype != before.dtype:
        return False
    if now.is_floating_point():
        return torch.equal(now.isnan(), before.isnan()) and torch.equal(now.nan_to_num(), before.nan_to_num())
    return torch.equal(now, before)


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Optional[str]]:
    """(fn(*args, **kwargs), None), or (None, a hint) when it raised or changed an input tensor in place."""
    snapshots = [(name, t, t.clone()) for name, value in _inputs(fn, args, kwargs)
                 if not isinstance(value, nn.Module) for t in _tensors(value)]
    try:
        with torch.no_grad():
            out = fn(*args, **kwargs)
    except NotImplementedError:
        return None, STUB
    except Exception as e:  # a learner's bug becomes a hint, never a crash
        return None, f"your function raised {type(e).__name__}: {e}"
    changed = next((name for name, now, before in snapshots if not _unchanged(now, before)), None)
    if changed is not None:
        return None, (f"{CHANGED_INPUT} {changed} in place (an in-place operation such as `+=`, `/=`, "
                      "`x[...] = ...` or a method ending in `_`), and the caller still needs it as it was: "
                      "work on a copy (`x = x.clone()`) or write `x = x + ...` instead of `x += ...`.")
    return out, None


def verdict(ok: bool, message: str) -> bool:
    """Print the one verdict line and return `ok`."""
    print(("OK: " if ok else "not yet: ") + message)
    return ok


def failure(error: str, hint: str = "") -> bool:
    """The verdict for a call that raised or changed its input: `error`, and `hint` after an exception."""
    if hint and not error.startswith(CHANGED_INPUT):
        error = f"{error.rstrip('.')}. Hint: {hint}"
    return verdict(False, error)


def shape_problem(out: Any, shape: tuple[int, ...]) -> Optional[str]:
    """What is wrong with `out` as a tensor of `shape`, or None."""
    if out is None:
        return "the function returns None; return a tensor."
    if not isinstance(out, Tensor):
        return f"expected a tensor, got {type(out).__name__}."
    if tuple(out.shape) != tuple(shape):
        transposed = len(shape) == 2 and shape[0] != shape[1] and tuple(out.shape) == tuple(shape)[::-1]
        return (f"expected shape {tuple(shape)}, got {tuple(out.shape)}"
                + (": the result is transposed (rows and columns swapped)." if transposed else "."))
    return None


def close(a: Any, b: Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """`a` is a tensor of b's shape and allclose to it (compared in float)."""
    return isinstance(a, Tensor) and a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol)


def mistake(got: Any, expected: Tensor, wrong_answers: Iterable[tuple[Callable[[], Any], str]],
            rtol: float = 1e-4, atol: float = 1e-5) -> Optional[str]:
    """The hint of the first wrong answer that `got` equals and the right answer does not, or None.

    wrong_answers: (a function computing what that mistake returns, its hint). A wrong answer
    that cannot be computed on this case (it raises) is skipped.
    """
    for wrong, hint in wrong_answers:
        try:
            with torch.no_grad():
                value = wrong()
        except Exception:
            continue
        if not isinstance(value, Tensor):
            value = torch.as_tensor(value, dtype=torch.float32)
        if close(got, value, rtol, atol) and not close(value, expected, rtol, atol):
            return hint
    return None
