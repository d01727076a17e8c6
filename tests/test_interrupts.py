"""A second Ctrl-C or SIGTERM never stops an unwind or the lock's release half-way."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest

from fabfile import sequence
from fabfile.engines import Release
from fabfile.interrupts import Interrupted, shielded, sigterm_interrupts
from fabfile.runner import StepFailed


def test_a_signal_in_a_shielded_block_waits_until_it_is_done():
    done = []
    with shielded("something") as got:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        done.append(True)
    assert done == [True] and got == [signal.SIGINT, signal.SIGTERM]


def test_sigterm_interrupts_like_ctrl_c():
    with pytest.raises(Interrupted), sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)


class Tiers:
    def __init__(self):
        self.unwound = []

    def tier(self, names):
        raise StepFailed("server: not healthy")

    def unwind(self, error):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again, while the new containers are removed
        self.unwound.append(str(error))

    def done(self):
        raise AssertionError("not after a failure")


def test_ctrl_c_during_the_unwind_lets_it_finish_and_the_failure_is_what_is_said():
    tiers = Tiers()
    engine = SimpleNamespace(plan_event=lambda run, state, release: {"services": {}}, tiers=lambda *a: tiers)
    held = SimpleNamespace(run="r", note_plan=lambda event: None)
    with pytest.raises(StepFailed, match="server: not healthy"):
        sequence.roll(SimpleNamespace(), engine, None, Release([], tiers=[["server"]]), held, wait=False)
    assert tiers.unwound == ["server: not healthy"]
