"""Ctrl-C and SIGTERM: how a run is interrupted, and the few blocks it must not be
interrupted in.

A SIGTERM (a CI runner cancelling the job, ``kill``) unwinds like Ctrl-C
(:func:`sigterm_interrupts`): what carries no traffic yet is removed, exit 130. While that
unwind runs, and while the lock is released, a second Ctrl-C or SIGTERM waits
(:func:`shielded`): an unwind or a release stopped half-way would leave more behind than
either signal asked for.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGTERM: unwinds like Ctrl-C (undo what carries no traffic yet, exit 130)."""


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises :class:`Interrupted` in the main thread while the block runs."""

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def shielded(what: str) -> Iterator[list[int]]:
    """Ctrl-C and SIGTERM are held back while the block runs (``what`` it does, said once if
    one arrives); yields the signals that arrived."""
    got: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if not got:
            print(f"\n(interrupt received: finishing {what} first)", file=sys.stderr, flush=True)
        got.append(signum)

    try:
        previous = {sig: signal.signal(sig, hold) for sig in SIGNALS}
    except ValueError:  # not the main thread: nothing to hold back
        yield got
        return
    try:
        yield got
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
