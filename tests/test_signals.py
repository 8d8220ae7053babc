"""StopRequest: the first SIGINT/SIGTERM asks for a clean stop, a second one aborts, handlers are restored after."""

from __future__ import annotations

import os
import signal

import pytest

from relssl.train.signals import StopRequest


@pytest.mark.parametrize("first, second", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM),
                                           (signal.SIGTERM, signal.SIGINT)])
def test_first_signal_requests_a_stop_and_a_second_aborts(first: signal.Signals, second: signal.Signals) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), first)
        assert stop.requested and stop.signal_name == first.name
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), second)
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_handlers_are_restored_when_no_signal_came() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGTERM) != before
    assert not stop.requested and signal.getsignal(signal.SIGTERM) == before
