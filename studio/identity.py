"""Who is using the app: Hugging Face OAuth on a Space, a password file offline, or a typed name.

Three modes, fixed at start:

- ``oauth``: running on a Space without an auth file. Visitors log in with the Hugging
  Face button (the Space's README sets ``hf_oauth: true``); their Hub username is their name.
- ``password``: ``--auth-file`` given. Gradio asks for a name and password before showing
  the app (and ``gradio_client.Client(url, auth=(name, password))`` for the API); the
  log-in name is the annotator name.
- ``name``: neither. Annotators type a display name; nothing checks it, so this mode is
  for a trusted machine (admin actions then trust the typed name too).

Auth file format: one ``name:password`` per line (the name may not contain ``:``);
blank lines and lines starting with ``#`` are ignored. Keep the file out of git.

Log-ins are throttled (``LoginGuard``) so that a stranger cannot turn the throttle against a user: after
``MAX_LOGIN_FAILURES`` wrong passwords within ``LOGIN_WINDOW_S`` for one name *from one address*, that
name is refused from that address only (the right password too) for a delay that doubles with each
further failure; a name is never locked from the addresses that did not guess. Behind that, an address
guessing many names (``MAX_ADDRESS_FAILURES``) is refused for every name, and when everyone together
fails more than ``MAX_GLOBAL_FAILURES`` times (guessing from many addresses), addresses new to the app are
refused for a while. A name that logged in from an address before (the admin's own machine, every
annotator's) keeps logging in from there through both: that is the admin's way in during an attack.
The address comes from ``LoginAddress``, an ASGI middleware in front of gradio's ``/login``.
"""

from __future__ import annotations

import collections
import contextvars
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from annotate.validation import MAX_NAME_CHARS, InvalidInput, check_name

from .limits import visitor_of

logger = logging.getLogger(__name__)

MAX_LOGIN_FAILURES = 5  # wrong passwords for one name from one address within LOGIN_WINDOW_S before that pair locks
MAX_ADDRESS_FAILURES = 20  # wrong passwords from one address, any names, before the address locks
MAX_GLOBAL_FAILURES = 200  # wrong passwords from everyone before addresses new to the app are refused
LOGIN_WINDOW_S = 600
FIRST_LOCK_S = 30  # doubled with each further failure while locked, up to MAX_LOCK_S
MAX_LOCK_S = 3600
MAX_GLOBAL_LOCK_S = 600  # the global limit refuses new addresses for at most this long at a time
MAX_REMEMBERED = 10_000  # keys a throttle keeps, and (name, address) log-ins remembered: memory stays bounded

# The address of the log-in being checked (set by ``LoginAddress``; gradio passes the check name and password only).
LOGIN_ADDRESS: contextvars.ContextVar[str | None] = contextvars.ContextVar("login_address", default=None)


class IdentityError(ValueError):
    """No usable annotator name, or a name without the right to do what it asked."""


def read_auth_file(path: str | Path) -> dict[str, str]:
    """Name -> password from an auth file; a malformed line raises ``IdentityError`` naming it."""
    users: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, colon, password = line.partition(":")
        where = f"{path}, line {number}"
        if not colon or not password:
            raise IdentityError(f"{where}: expected 'name:password'")
        try:
            name = check_name(name.strip())
        except InvalidInput as err:
            raise IdentityError(f"{where}: {err}") from None
        if name in users:
            raise IdentityError(f"{where}: {name!r} is listed twice")
        users[name] = password
    if not users:
        raise IdentityError(f"{path} lists no 'name:password' line: nobody could log in")
    return users


class LoginThrottle:
    """Failed log-ins per key (a name, an address): ``locked_s`` says how long a key is still refused (thread-safe).

    Failures count in a row while each comes within ``window_s`` of the previous one (or of the end of the
    last lock); the ``max_failures``-th locks the key for ``first_lock_s``, each further one for twice as long
    as the last, up to ``max_lock_s``. A right password clears the key."""

    def __init__(self, max_failures: int = MAX_LOGIN_FAILURES, window_s: float = LOGIN_WINDOW_S,
                 first_lock_s: float = FIRST_LOCK_S, max_lock_s: float = MAX_LOCK_S, clock=time.monotonic):
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self.first_lock_s, self.max_lock_s = first_lock_s, max_lock_s
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float]] = {}  # key -> (failures in a row, when the last one was)
        self._locked_until: dict[str, float] = {}

    def locked_s(self, keys: Iterable[str]) -> float:
        """Seconds until every one of ``keys`` may try again; 0 when none is locked."""
        now = self.clock()
        with self._lock:
            return max([0.0, *(self._locked_until.get(key, now) - now for key in keys)])

    def failed(self, keys: Iterable[str]) -> None:
        now = self.clock()
        with self._lock:
            if len(self._failures) > MAX_REMEMBERED:  # many names or addresses: forget the ones at rest
                for key, (_, last) in list(self._failures.items()):
                    if now - max(last, self._locked_until.get(key, last)) > self.window_s:
                        self._failures.pop(key)
                        self._locked_until.pop(key, None)
            for key in keys:
                count, last = self._failures.get(key, (0, now))
                if now - max(last, self._locked_until.get(key, last)) > self.window_s:
                    count = 0
                count += 1
                self._failures[key] = (count, now)
                if count >= self.max_failures:
                    lock_s = self.first_lock_s * 2 ** min(count - self.max_failures, 30)
                    self._locked_until[key] = now + min(self.max_lock_s, lock_s)

    def succeeded(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
                self._locked_until.pop(key, None)


class LoginGuard:
    """Who may try a password now (see the module docstring): a ``LoginThrottle`` per (name, address), per address
    and for everyone, and the (name, address) pairs that logged in before, which only their own lock refuses."""

    def __init__(self, clock=time.monotonic):
        self.pairs = LoginThrottle(MAX_LOGIN_FAILURES, clock=clock)
        self.addresses = LoginThrottle(MAX_ADDRESS_FAILURES, clock=clock)
        self.everyone = LoginThrottle(MAX_GLOBAL_FAILURES, max_lock_s=MAX_GLOBAL_LOCK_S, clock=clock)
        self._lock = threading.Lock()
        self._known: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()

    def wait_s(self, name: str, address: str) -> float:
        """Seconds until ``name`` may try a password from ``address``; 0: now."""
        wait = self.pairs.locked_s([json.dumps([name, address])])
        with self._lock:
            known = (name, address) in self._known
        if known:
            return wait
        return max(wait, self.addresses.locked_s([address]), self.everyone.locked_s(["everyone"]))

    def failed(self, name: str, address: str) -> None:
        self.pairs.failed([json.dumps([name, address])])
        self.addresses.failed([address])
        self.everyone.failed(["everyone"])

    def succeeded(self, name: str, address: str) -> None:
        self.pairs.succeeded([json.dumps([name, address])])
        with self._lock:
            self._known[name, address] = None
            self._known.move_to_end((name, address))
            while len(self._known) > MAX_REMEMBERED:
                self._known.popitem(last=False)


def password_check(users: dict[str, str], guard: LoginGuard | None = None,
                   address: Callable[[], str | None] = LOGIN_ADDRESS.get) -> Callable[[str, str], bool]:
    """The ``auth`` callable for ``launch``: constant-time password comparison, refused while ``guard`` (a new one
    when None) holds the name back from this address (``address()``, set by ``LoginAddress``)."""
    guard = LoginGuard() if guard is None else guard

    def check(name: str, password: str) -> bool:
        where = address() or "unknown"
        wait = guard.wait_s(name, where)
        if wait > 0:
            logger.warning("log-in refused for %r from %s: too many wrong passwords, locked for %.0f s more",
                           name, where, wait)
            return False
        expected = users.get(name)
        if expected is not None and hmac.compare_digest(expected.encode(), password.encode()):
            guard.succeeded(name, where)
            return True
        guard.failed(name, where)
        return False

    return check


class LoginAddress:
    """ASGI middleware: a request to gradio's ``/login`` runs with ``LOGIN_ADDRESS`` set to the client's address
    (``studio.limits.visitor_of``: ``X-Forwarded-For`` only with ``trust_proxy``)."""

    def __init__(self, app, trust_proxy: bool):
        self.app, self.trust_proxy = app, trust_proxy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].rstrip("/").endswith("/login"):
            return await self.app(scope, receive, send)
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
        client = scope.get("client") or (None, None)
        token = LOGIN_ADDRESS.set(visitor_of(None, client[0], headers.get("x-forwarded-for"), self.trust_proxy))
        try:
            await self.app(scope, receive, send)
        finally:
            LOGIN_ADDRESS.reset(token)


NAME_RULE = (f"a name is text of at most {MAX_NAME_CHARS} characters, without control or invisible characters "
             "(letters, digits, spaces and punctuation)")


def resolve_name(mode: str, *, typed: str | None, username: str | None, oauth_username: str | None) -> str:
    """The annotator's name for this request, per the identity mode (see the module docstring)."""
    if mode == "oauth":
        if not oauth_username:
            raise IdentityError("log in with your Hugging Face account first (button at the top)")
        return oauth_username
    if mode == "password":
        if not username:
            raise IdentityError("this app requires logging in; your session has no user name")
        return username
    if typed is None or (isinstance(typed, str) and not typed.strip()):
        raise IdentityError("type your annotator name first, in the name box at the top")
    try:
        return check_name(typed.strip() if isinstance(typed, str) else typed)
    except InvalidInput as err:  # the page always sends text: the rule; an API call sending other things, what it sent
        raise IdentityError(f"type your annotator name first: {NAME_RULE if isinstance(typed, str) else err}") from None
