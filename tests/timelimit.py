"""A hard per-call time limit for fuzz tests (hypothesis' deadline only reports afterwards)."""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager


class Hang(BaseException):
    """Raised by the alarm; a BaseException so no ``except Exception`` swallows it."""


@contextmanager
def time_limit(seconds: float):
    def fire(_signum, frame):
        # not inside hypothesis' gc callback or pytest's hooks (an exception there is lost or
        # reported as unraisable); the timer re-fires 50 ms later
        if frame is not None and any(part in frame.f_code.co_filename for part in ("hypothesis", "_pytest")):
            return
        raise Hang(f"still running after {seconds}s")
    old = signal.signal(signal.SIGALRM, fire)
    outer, started = signal.getitimer(signal.ITIMER_REAL), time.monotonic()  # pytest-timeout's, if any
    # re-fires every 50 ms: os-ken has bare ``except:`` clauses that can swallow one alarm
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.05)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, max(0.01, outer[0] - (time.monotonic() - started)), outer[1])
