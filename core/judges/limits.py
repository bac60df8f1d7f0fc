"""Flow control for judge calls: retry policy with backoff, and request/token rate limits.

* :class:`RetryPolicy` -- exponential backoff with full jitter (AWS-style: a uniform draw in
  [0, base * 2^(n-1)], capped), never earlier than the server's ``Retry-After`` /
  ``retry-after-ms``. Two budgets: ``max_attempts`` HTTP attempts per call for transient errors
  (429, 5xx, timeouts, dropped connections) and ``reply_attempts`` calls per judgement when the
  reply is unparsable or out of range.
* :class:`TokenBucket` -- a leaky bucket refilled continuously at ``rate`` per minute, holding at
  most ``burst_seconds`` worth. A request larger than the bucket waits for a full bucket and
  drives it negative, so an oversized request is slowed, never refused.
* :class:`RateLimiter` -- requests/min and tokens/min buckets plus a shared pause: a 429 with a
  ``Retry-After`` stops *all* new requests until then (the limit is per account, not per call).
  Token use is estimated before a call and settled with the server's ``usage`` afterwards.

All waiting is ``asyncio.sleep``; nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass


@dataclass
class RetryPolicy:
    max_attempts: int = 6  # HTTP attempts per call on 429 / 5xx / timeout / connection errors
    reply_attempts: int = 3  # calls per judgement while the reply is unparsable or out of range
    base_delay: float = 0.5  # seconds; the n-th retry draws from [0, base * 2^(n-1)]
    max_delay: float = 30.0  # cap of the exponential part
    max_retry_after: float = 120.0  # a longer Retry-After is treated as a failure, not waited for

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.reply_attempts < 1:
            raise ValueError("max_attempts and reply_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("retry delays must not be negative")

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        cap = min(self.max_delay, self.base_delay * 2 ** max(0, attempt - 1))
        jittered = (rng or random).uniform(0.0, cap)
        if retry_after is not None and retry_after > 0:
            return max(retry_after, jittered)
        return jittered


class TokenBucket:
    """``rate`` units per minute, at most ``burst_seconds`` worth stored."""

    def __init__(self, rate_per_minute: float, burst_seconds: float = 1.0) -> None:
        if rate_per_minute <= 0:
            raise ValueError(f"a rate limit must be positive, got {rate_per_minute}")
        self.rate = rate_per_minute / 60.0  # units per second
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self._lock: asyncio.Lock | None = None

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    async def acquire(self, amount: float = 1.0) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # FIFO: one waiter at a time drains the bucket
            need = min(amount, self.capacity)
            while True:
                self._refill()
                if self.level >= need:
                    self.level -= amount
                    return
                await asyncio.sleep((need - self.level) / self.rate)

    def adjust(self, amount: float) -> None:
        """Give back (positive) or take (negative) units after the real cost is known."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    """Requests/min and tokens/min limits, and a shared pause after a 429 with Retry-After."""

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        burst_seconds: float = 1.0,
    ) -> None:
        self.requests = (
            TokenBucket(requests_per_minute, burst_seconds) if requests_per_minute else None
        )
        self.tokens = TokenBucket(tokens_per_minute, burst_seconds) if tokens_per_minute else None
        self.paused_until = 0.0  # time.monotonic() before which no request starts

    async def acquire(self, estimated_tokens: int) -> None:
        while (wait := self.paused_until - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        if self.requests:
            await self.requests.acquire(1)
        if self.tokens:
            await self.tokens.acquire(estimated_tokens)

    def settle(self, estimated_tokens: int, actual_tokens: int | None) -> None:
        if self.tokens and actual_tokens is not None:
            self.tokens.adjust(estimated_tokens - actual_tokens)

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)
