"""Who may use the HTTP APIs: named users with a role, each holding a bearer token.

The users file (``ORDEROPS_SUPPORT_USERS_FILE``) holds one user a line, ``<user id> <role>
sha256:<hex>``: the token's SHA-256, never the token (tokens are 256 random bits, so a plain hash
is as good as a slow one and keeps each check cheap). ``orderops users add`` writes it and shows the
token once. The file is re-read when it changes, so adding a user or rotating a token needs no
restart. Tokens are compared in constant time, against every user, so neither the time taken nor
the order of the file says which user came close.

Roles are ordered: an agent reads views and timelines, logs contacts, tags, acknowledges and
assigns escalations; a lead may also resolve escalations and approve policy exceptions; an admin
may do everything a lead may, and manage users (``orderops users``, on the host).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("agent", "lead", "admin")
_USER_ID = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class UsersFileError(Exception):
    """The users file cannot be used as it is; the message names the line and what is wrong."""


@dataclass(frozen=True)
class User:
    user_id: str
    role: str

    def may(self, role: str) -> bool:
        """Whether this user's role includes ``role`` (agent < lead < admin)."""
        return ROLES.index(self.role) >= ROLES.index(role)

    def as_actor(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "role": self.role}


def digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def parse(text: str, source: str = "users file", roles: tuple[str, ...] = ROLES) -> dict[str, tuple[str, str]]:
    """``{user id: (role, digest)}``; refuses anything else with the line and the reason. ``roles``:
    what the second field may be (the ingest's principals name the upstream system instead)."""
    users: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3:
            raise UsersFileError(f"{source}:{number}: expected '<user id> <role> sha256:<hex>', got {len(parts)} fields")
        user_id, role, token_digest = parts
        if not _USER_ID.match(user_id):
            raise UsersFileError(f"{source}:{number}: user id {user_id!r} is not 1-64 of letters, digits, . _ @ -")
        if role not in roles:
            raise UsersFileError(f"{source}:{number}: role {role!r} is not one of {', '.join(roles)}")
        if not _DIGEST.match(token_digest):
            raise UsersFileError(f"{source}:{number}: the token must be given as sha256:<64 hex digits>, "
                                 "never in clear (orderops users add writes it)")
        if user_id in users:
            raise UsersFileError(f"{source}:{number}: user {user_id} appears twice")
        users[user_id] = (role, token_digest)
    return users


class Users:
    """The users of one worker, from the users file, re-read when the file changes."""

    def __init__(self, path: Path | None, roles: tuple[str, ...] = ROLES,
                 setting: str = "ORDEROPS_SUPPORT_USERS_FILE") -> None:
        self.path, self.roles, self.setting = path, roles, setting
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, tuple[str, str]] = {}
        self.problem: str | None = None
        self.refresh()

    def refresh(self) -> None:
        if self.path is None:
            self._users, self.problem = {}, f"no users file is configured ({self.setting})"
            return
        try:
            stat = self.path.stat()
        except OSError as exc:
            self._users, self._stamp = {}, None
            self.problem = f"the users file {self.path} cannot be read ({exc.strerror}): nobody can sign in"
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            self._users, self.problem = parse(self.path.read_text(), str(self.path), self.roles), None
        except (OSError, UnicodeDecodeError, UsersFileError) as exc:
            # Keep nobody rather than a half-read file: a broken file locks everyone out, loudly.
            self._users, self.problem = {}, f"{exc}: nobody can sign in until it is fixed"
        self._stamp = stamp

    def authenticate(self, token: str | None) -> User | None:
        self.refresh()
        if not token:
            return None
        presented = digest(token).encode()
        found = None
        for user_id, (role, expected) in self._users.items():
            if hmac.compare_digest(presented, expected.encode()) and found is None:
                found = User(user_id, role)
        return found

    def __len__(self) -> int:
        self.refresh()
        return len(self._users)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


SUPPORT_USERS_HEADER = "# orderops support users: <user id> <role> sha256(token). Written by `orderops users`."


def add_user(path: Path, user_id: str, role: str, token: str | None = None, roles: tuple[str, ...] = ROLES,
             header: str = SUPPORT_USERS_HEADER) -> str:
    """Add the user, or give an existing one a new role and token; returns the token (shown once)."""
    if not _USER_ID.match(user_id):
        raise UsersFileError(f"user id {user_id!r} is not 1-64 of letters, digits, . _ @ -")
    if role not in roles:
        raise UsersFileError(f"role {role!r} is not one of {', '.join(roles)}")
    token = token or new_token()
    users = parse(path.read_text(), str(path), roles) if path.exists() else {}
    users[user_id] = (role, digest(token))
    _write(path, users, header)
    return token


def remove_user(path: Path, user_id: str, roles: tuple[str, ...] = ROLES, header: str = SUPPORT_USERS_HEADER) -> bool:
    users = parse(path.read_text(), str(path), roles) if path.exists() else {}
    if users.pop(user_id, None) is None:
        return False
    _write(path, users, header)
    return True


def _write(path: Path, users: dict[str, tuple[str, str]], header: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = [header]
    lines += [f"{user_id} {role} {token_digest}" for user_id, (role, token_digest) in sorted(users.items())]
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    os.replace(temporary, path)  # readers see the old file or the new one, never half of one
