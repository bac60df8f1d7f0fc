"""Users, roles and password hashing.

Roles: ``admin`` (everything, including user management), ``annotator`` (reviews and fixes
reward labels), ``rater`` (blind human ratings of benchmark outputs).

Passwords are never stored: ``password_hash`` is ``scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>``
(``hashlib.scrypt``, n=2**14, r=8, p=1, a fresh 16-byte salt per user and per change; about
16 MiB and a few tens of milliseconds per check). Python builds whose OpenSSL lacks scrypt
fall back to ``pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>``. :func:`verify_password`
reads the parameters from the stored string, so both formats keep working side by side, and
compares in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from .base import StoreBase, now, require_choice, require_text
from .errors import ConflictError, NotFoundError, StoreError, StoreInputError
from .schema import ROLES

MIN_PASSWORD_CHARS = 8
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
PBKDF2_ITERATIONS = 600_000
_HAS_SCRYPT = hasattr(hashlib, "scrypt")


def hash_password(password: str) -> str:
    """A salted, self-describing hash of ``password`` (see module docstring)."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise StoreInputError(f"a password must have at least {MIN_PASSWORD_CHARS} characters.")
    salt = os.urandom(16)
    if _HAS_SCRYPT:
        digest = hashlib.scrypt(
            password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
        )
        return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PBKDF2_ITERATIONS)
    return f"pbkdf2_sha256${PBKDF2_ITERATIONS}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    """True when ``password`` matches the ``stored`` hash (constant-time comparison)."""
    if not isinstance(password, str):
        return False
    parts = stored.split("$")
    if parts[0] == "scrypt" and len(parts) == 6:
        n, r, p = (int(x) for x in parts[1:4])
        salt, expected = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
        digest = hashlib.scrypt(
            password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=2**26
        )
    elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
        salt, expected = bytes.fromhex(parts[2]), bytes.fromhex(parts[3])
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, int(parts[1]))
    else:
        raise ValueError(f"unknown password hash format {parts[0]!r}")
    return hmac.compare_digest(digest, expected)


_DUMMY_HASH: str | None = None  # checked against for unknown users, so timing reveals nothing


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (bool(v) if k == "active" else v) for k, v in row.items() if k != "password_hash"}


class UsersMixin(StoreBase):
    def add_user(self, name: str, role: str, password: str) -> dict[str, Any]:
        """Create a user; raises ConflictError if the name is taken."""
        require_text(name, "user name")
        if name != name.strip():
            raise StoreInputError(f"user name {name!r} has leading or trailing spaces.")
        require_choice(role, ROLES, "role")
        pw = hash_password(password)
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", [name]).fetchone():
                raise ConflictError(f"a user named {name!r} already exists.")
            db.execute(
                "INSERT INTO users (name, role, password_hash, active, created_at) "
                "VALUES (?, ?, ?, 1, ?)",
                [name, role, pw, now()],
            )
        return self.get_user(name)

    def get_user(self, name: str) -> dict[str, Any] | None:
        """``{name, role, active, created_at}`` or None (the hash is never returned)."""
        with self.db() as db:
            rows = list(db.query("SELECT * FROM users WHERE name = ?", [name]))
        return _public(rows[0]) if rows else None

    def list_users(self, *, role: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM users", []
        if role is not None:
            sql, params = sql + " WHERE role = ?", [require_choice(role, ROLES, "role")]
        with self.db() as db:
            return [_public(r) for r in db.query(sql + " ORDER BY name", params)]

    def _update_user(self, name: str, column: str, value: Any) -> None:
        with self.transaction() as db:
            cur = db.conn.execute(f"UPDATE users SET {column} = ? WHERE name = ?", [value, name])
            if cur.rowcount != 1:
                raise NotFoundError(f"no user named {name!r} exists.")

    def set_password(self, name: str, password: str) -> None:
        self._update_user(name, "password_hash", hash_password(password))

    def set_role(self, name: str, role: str) -> None:
        self._update_user(name, "role", require_choice(role, ROLES, "role"))

    def set_active(self, name: str, active: bool) -> None:
        """Deactivate (or reactivate) a user; inactive users cannot log in. Users are never
        deleted, because history rows and ratings refer to them by name."""
        self._update_user(name, "active", int(bool(active)))

    def verify_password(self, name: str, password: str) -> bool:
        """True if ``name`` is an active user and ``password`` is theirs."""
        global _DUMMY_HASH
        with self.db() as db:
            row = db.execute(
                "SELECT password_hash, active FROM users WHERE name = ?", [name]
            ).fetchone()
        if row is None:
            if _DUMMY_HASH is None:
                _DUMMY_HASH = hash_password("not-a-real-password")
            check_password(password, _DUMMY_HASH)
            return False
        try:
            return check_password(password, row[0]) and bool(row[1])
        except ValueError:
            raise StoreError(
                f"the stored password hash of user {name!r} is unreadable; an admin must set a "
                "new password with set_password."
            ) from None
