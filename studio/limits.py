"""Limits that keep one visitor from holding the device: a per-visitor rate limit on generation
and a bounded queue that answers "busy, try again in N s" at once instead of waiting forever.

Generation runs one request at a time per app (one device). A request that would find more
than ``queue_size`` requests ahead of it is refused immediately, with an estimate of the wait
from the recent generation times; a visitor (``visitor_of``: logged-in name, else their address)
may have one generation running or queued at a time and start at most ``per_minute`` in any
60 s, so one visitor cannot fill the queue. The annotation endpoints never pass through here,
and on a CPU generation leaves them a core (``generation_threads``), so votes stay fast while
the queue is full.
"""

from __future__ import annotations

import collections
import contextlib
import math
import threading
import time


def generation_threads(requested: int, device_type: str, cores: int) -> int | None:
    """Threads torch may use to generate on ``device_type``; None leaves torch's own choice.

    ``requested`` 0 on a CPU: every core but one. Torch's threads spin on every core they are
    given, and a vote waiting for a core took 250 ms (p50) on 2 cores with the queue full.
    """
    if requested:
        return requested
    if device_type != "cpu":
        return None
    return max(1, cores - 1)


def visitor_of(username: str | None, address: str | None, forwarded_for: str | None, trust_proxy: bool) -> str:
    """Who the per-visitor limits count: the logged-in name, else the client's address.

    ``X-Forwarded-For`` (``forwarded_for``) is whatever the client wrote unless the app runs behind a proxy
    that sets it (``trust_proxy``, the owner's word): then its last entry counts, the address the proxy saw
    (a client can only add entries in front of it). Without a proxy, a header would let a visitor be anyone.
    """
    if username:
        return f"user:{username}"
    proxied = (forwarded_for or "").split(",")[-1].strip() if trust_proxy else ""
    return f"address:{proxied or address or 'unknown'}"


class Busy(ValueError):
    """Refused now, fine later: the message says when to try again."""


class GenerationGate:
    """``with gate.admit(visitor):`` around one generation (thread-safe)."""

    def __init__(self, queue_size: int, per_minute: int, clock=time.monotonic):
        self.queue_size, self.per_minute, self.clock = queue_size, per_minute, clock
        self._lock = threading.Lock()
        self._device = threading.Lock()
        self._waiting = 0  # admitted requests not finished yet (running or queued)
        self._active: set[str] = set()  # visitors with one of them
        self._starts: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._recent_s: collections.deque = collections.deque([10.0], maxlen=5)

    def _typical_s(self) -> float:
        return sum(self._recent_s) / len(self._recent_s)

    @contextlib.contextmanager
    def admit(self, visitor: str):
        now = self.clock()
        with self._lock:
            if visitor in self._active:
                raise Busy("you already have a generation running or queued: wait for it to finish")
            starts = self._starts[visitor]
            while starts and now - starts[0] >= 60:
                starts.popleft()
            if len(starts) >= self.per_minute:
                wait = math.ceil(60 - (now - starts[0]))
                raise Busy(f"you can start {self.per_minute} generations per minute: try again in {wait} s")
            if self._waiting > self.queue_size:
                wait = math.ceil(self._waiting * self._typical_s())
                raise Busy(f"busy: {self._waiting} generations are running or queued, try again in {wait} s")
            starts.append(now)
            self._waiting += 1
            self._active.add(visitor)
        try:
            with self._device:
                started = self.clock()
                yield
                with self._lock:
                    self._recent_s.append(self.clock() - started)
        finally:
            with self._lock:
                self._waiting -= 1
                self._active.discard(visitor)
