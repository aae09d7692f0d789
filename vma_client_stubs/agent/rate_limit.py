"""Copy-rate limits: token buckets shared by every copier thread they limit, retuned live by the OMA.

A small bucket of our own rather than a library's: what is needed is byte-granular (a 2 MiB write at 20 MiB/s),
shared across threads, changed while threads wait (a new rate takes effect at the next wake-up, at most
`MAX_WAIT_S` later, not after the wait the old rate computed), and lets a waiting NBD connection keep reading its
replies. The limiters on the index (pyrate-limiter, aiolimiter) count requests per window or are asyncio-only.

The bucket runs in debt: a writer takes its bytes as soon as the bucket is not in debt, and the next writer waits
until the debt is paid back at the current rate. Over any period the bytes taken are at most rate * period plus one
write and the small burst allowance, whatever the write size (a bucket that waited for `n` tokens could never pass a
write larger than its capacity).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime

#: longest single sleep of a waiting writer: a rate change or a cancel is seen within this time
MAX_WAIT_S = 0.05
#: tokens a bucket may save up while idle, as seconds of its rate (a short burst after a pause)
BURST_S = 0.05


def _never() -> bool:
    return False


def _nothing() -> None:
    return None


class TokenBucket:
    """A rate in bytes per second for any number of threads; 0 is unlimited. `set_rate` may be called at any time."""

    def __init__(self, rate: float = 0.0, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        if rate < 0:
            raise ValueError("rate must not be negative")
        self._monotonic = monotonic
        self._cond = threading.Condition()
        self._rate = float(rate)
        self._tokens = 0.0  # starts empty: a new limit allows no initial burst
        self._last = monotonic()

    @property
    def rate(self) -> float:
        with self._cond:
            return self._rate

    def set_rate(self, rate: float) -> None:
        """Change the rate now; waiting writers recompute their wait at once (0: unlimited, they all go)."""
        if rate < 0:
            raise ValueError("rate must not be negative")
        with self._cond:
            self._refill()
            if self._rate <= 0:
                self._tokens = 0.0  # from unlimited: start without savings
            self._rate = float(rate)
            self._tokens = min(self._tokens, self._capacity())
            self._cond.notify_all()

    def _capacity(self) -> float:
        return self._rate * BURST_S

    def _refill(self) -> None:
        now = self._monotonic()
        if self._rate > 0:
            self._tokens = min(self._capacity(), self._tokens + self._rate * (now - self._last))
        self._last = now

    def acquire(self, n: int, *, cancelled: Callable[[], bool] = _never, idle: Callable[[], None] = _nothing) -> None:
        """Take `n` bytes, waiting while the bucket is in debt; `idle` runs between short sleeps (to take in NBD
        replies); returns early without waiting further once `cancelled()` is true."""
        while True:
            with self._cond:
                self._refill()
                if self._rate <= 0:
                    return
                if self._tokens >= 0:
                    self._tokens -= n
                    return
                self._cond.wait(min(-self._tokens / self._rate, MAX_WAIT_S))
            if cancelled():
                return
            idle()


class BandwidthLimits:
    """The agent's limits as the OMA last set them: one bucket for all its copies and one per job that has a limit.

    A `SetBandwidthLimitCommand` carries the whole set; a command issued before the newest one applied is ignored,
    so a late resend cannot bring back an old limit. `local_ceiling` (the agent's `--max-rate-mib`) applies on top.
    """

    def __init__(self, local_ceiling: float = 0.0) -> None:
        self._lock = threading.Lock()
        self.appliance = TokenBucket()
        self.local = TokenBucket(local_ceiling)
        self._jobs: dict[str, TokenBucket] = {}
        self._job_rates: dict[str, float] = {}
        self._applied_at: datetime | None = None

    def apply(self, appliance_rate: float, job_rates: Mapping[str, float], issued_at: datetime) -> bool:
        """Set every rate from one command; False (nothing changed) for a command older than the newest applied."""
        with self._lock:
            if self._applied_at is not None and issued_at < self._applied_at:
                return False
            self._applied_at = issued_at
            self._job_rates = dict(job_rates)
            self.appliance.set_rate(appliance_rate)
            for job_id, bucket in self._jobs.items():
                bucket.set_rate(self._job_rates.get(job_id, 0.0))
            return True

    def buckets_for(self, job_id: str) -> tuple[TokenBucket, ...]:
        """Every bucket a copy of `job_id` takes its bytes from (the job's is made on first use)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                job = self._jobs[job_id] = TokenBucket(self._job_rates.get(job_id, 0.0))
            return (self.local, self.appliance, job)

    def forget(self, job_id: str) -> None:
        """The job's run ended: drop its bucket (its rate stays known should it run again)."""
        with self._lock:
            self._jobs.pop(job_id, None)

    def rates(self) -> dict[str, float]:
        """The rates in force, for logs and status: "appliance", "local" and one entry per job with a limit."""
        with self._lock:
            found = {"appliance": self.appliance.rate, "local": self.local.rate}
            found.update({f"job {job_id}": rate for job_id, rate in self._job_rates.items() if rate > 0})
            return found
