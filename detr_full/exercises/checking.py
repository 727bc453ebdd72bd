"""What every exercise checker shares: run the learner's function without letting a mistake stop
the notebook, compare, and print one verdict line ("OK: ..." or "not yet: <hint>")."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Optional[str]]:
    """(fn(*args, **kwargs), None), or (None, a hint naming the exception) when it raised."""
    try:
        with torch.no_grad():
            return fn(*args, **kwargs), None
    except NotImplementedError:
        return None, "the function is still a stub (it raises NotImplementedError)"
    except Exception as e:  # a learner's bug becomes a hint, never a crash
        return None, f"your function raised {type(e).__name__}: {e}"


def verdict(ok: bool, message: str) -> bool:
    """Print the one verdict line and return `ok`."""
    print(("OK: " if ok else "not yet: ") + message)
    return ok


def shape_problem(out: Any, shape: tuple[int, ...]) -> Optional[str]:
    """What is wrong with `out` as a tensor of `shape`, or None."""
    if out is None:
        return "the function returns None; return a tensor."
    if not isinstance(out, Tensor):
        return f"expected a tensor, got {type(out).__name__}."
    if tuple(out.shape) != tuple(shape):
        return f"expected shape {tuple(shape)}, got {tuple(out.shape)}."
    return None


def close(a: Any, b: Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """`a` is a tensor of b's shape and allclose to it (compared in float)."""
    return isinstance(a, Tensor) and a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol)
