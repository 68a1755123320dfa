"""Small helpers shared by the runtime's modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collapse_single_exception"]


def _sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    while len(group.exceptions) == 1:
        (inner,) = group.exceptions
        if not isinstance(inner, BaseExceptionGroup):
            return inner
        group = inner
    return None


@contextmanager
def collapse_single_exception() -> Iterator[None]:
    """Re-raise an exception group that wraps exactly one exception as that exception.

    Our context managers yield inside a nursery, so trio wraps whatever the caller's block
    raises into an ExceptionGroup. The background tasks never raise on purpose, so a
    one-exception group is the caller's own error: hand it back unwrapped so ``except
    ValueError`` in the caller keeps working. Real multi-error groups pass through.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        sole = _sole_exception(group)
        if sole is None:
            raise
    else:
        return
    context = sole.__context__
    try:
        raise sole
    finally:
        # Raising here would record the group as the context; keep the original one.
        sole.__context__ = context
        del sole, context
