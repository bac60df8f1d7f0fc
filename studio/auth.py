"""Who is calling, and may they do this? Login policy and roles for the studio.

Rules (docs/studio.md, "Users and login"):

* Serving on anything but localhost requires login. ``launch(auth=...)`` gets
  :func:`password_check`, which asks the store (users, roles and scrypt-hashed passwords live
  there), so Gradio refuses every page and API call without a session cookie.
* Handlers never trust the client for identity. The acting user is ``request.username``,
  which Gradio fills from the login session; no event takes a user name as an input, so a
  rater cannot submit a rating as somebody else even through the raw API.
* Defence in depth: even if the app were (mis)launched without ``auth`` on a public
  interface, :meth:`Access.user` refuses review and rating calls that carry no logged-in
  user whenever the policy says login is required.
* On localhost without ``--auth`` the studio is a single-user tool: every call acts as the
  local user :data:`LOCAL_USER` with the admin role. That user exists in the store (ratings
  and history refer to users by name) with a random password nobody knows, so it can never
  be used to log in to a served studio.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from core.store import ConflictError, Store

LOCAL_USER = "local"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}

# What each role may do. Admins may do everything.
# Raters may not run the model: the Edit tab's model may be one of the systems they compare,
# and editing a benchmark input would show them that system's output (and so unblind them).
CAN_EDIT = ("admin", "annotator")  # run the model in the Edit tab
CAN_REVIEW = ("admin", "annotator")  # review and correct labels; send edits to review
CAN_RATE = ("admin", "rater")  # blind human evaluation
CAN_SEE_RESULTS = ("admin",)  # results name the systems, so raters never see them
TABS = {"edit": CAN_EDIT, "review": CAN_REVIEW, "rate": CAN_RATE}  # tab id -> roles shown it


def visible_tabs(role: str | None) -> list[str]:
    """The ids of the tabs a role sees (none for a caller who is not logged in)."""
    return [tab for tab, roles in TABS.items() if role in roles]


class AccessDenied(PermissionError):
    """The caller is not logged in or their role does not allow the action."""


def is_local_host(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class User:
    name: str
    role: str


@dataclass(frozen=True)
class Access:
    """The studio's login policy; see the module docstring."""

    store: Store
    login_required: bool

    def user(self, username: str | None, allowed: tuple[str, ...], action: str) -> User:
        """The acting user for ``action`` or :class:`AccessDenied` with a clear sentence.

        ``username`` must come from ``gr.Request.username`` (the login session).
        """
        if not username:
            if self.login_required:
                raise AccessDenied(
                    f"You must log in to {action}. This studio is served beyond localhost, "
                    "so every review and rating call needs a logged-in user."
                )
            username = LOCAL_USER
        record = self.store.get_user(username)
        if record is None or not record["active"]:
            raise AccessDenied(f"User {username!r} is not an active user of this studio.")
        if record["role"] not in allowed:
            raise AccessDenied(
                f"User {username!r} has the role {record['role']!r}, which may not {action} "
                f"(allowed roles: {', '.join(allowed)})."
            )
        return User(username, record["role"])

    def role_of(self, username: str | None) -> str | None:
        """The caller's role, or None when not logged in / unknown (never raises)."""
        if not username:
            username = None if self.login_required else LOCAL_USER
        if username is None:
            return None
        record = self.store.get_user(username)
        return record["role"] if record and record["active"] else None


def ensure_local_user(store: Store) -> None:
    """Create the local admin (random password, see module docstring) if it is missing."""
    if store.get_user(LOCAL_USER) is not None:
        return
    try:
        store.add_user(LOCAL_USER, "admin", secrets.token_urlsafe(32))
    except ConflictError:  # another process created it between our check and the insert
        pass


@dataclass
class LoginThrottle:
    """Slows password guessing and hides which user names exist.

    * After ``limit`` failed attempts for one user name within ``window`` seconds, further
      attempts for that name are refused without checking the password until the oldest
      failure leaves the window (the right password included: a guesser learns nothing).
    * Every attempt takes at least ``floor`` seconds, whatever happens inside: an unknown
      name (the store checks a dummy hash), the ``local`` identity, a refused or a wrong
      password all answer after the same time as a right one.
    """

    limit: int = 5  # failed attempts per user name ...
    window: float = 300.0  # ... within this many seconds
    floor: float = 0.4  # seconds every attempt takes at least (scrypt takes ~0.05-0.1 s)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _failures: dict[str, deque] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _blocked(self, key: str, now: float) -> bool:
        with self._lock:
            recent = self._failures.setdefault(key, deque())
            while recent and now - recent[0] > self.window:
                recent.popleft()
            return len(recent) >= self.limit

    def _failed(self, key: str, now: float) -> None:
        with self._lock:
            self._failures.setdefault(key, deque()).append(now)

    def attempt(self, username: str, verify: Callable[[], bool]) -> bool:
        """Run ``verify`` unless ``username`` is throttled; pad the time to ``floor``."""
        start = self.clock()
        key = (username or "").strip().casefold()
        ok = False
        if not self._blocked(key, start):
            ok = verify()
            if not ok:
                self._failed(key, start)
        elapsed = self.clock() - start
        if elapsed < self.floor:
            self.sleep(self.floor - elapsed)
        return ok


def password_check(
    store: Store, throttle: LoginThrottle | None = None
) -> Callable[[str, str], bool]:
    """The ``auth=`` callable for ``launch``: active users with their own password only,
    throttled per user name and with the same answer time for every name (LoginThrottle)."""
    throttle = throttle or LoginThrottle()

    def verify(username: str, password: str) -> bool:
        if username == LOCAL_USER:  # the local single-user identity never logs in remotely
            store.verify_password("", password)  # the same work as for an unknown name
            return False
        return store.verify_password(username, password)

    def check(username: str, password: str) -> bool:
        return throttle.attempt(username, lambda: verify(username, password))

    return check
