"""Passwords (bcrypt), signed expiring tokens, and the permission rules.

bcrypt is deliberately slow (~0.25 s at cost 12), so verification runs in a worker thread and
a successful (user, password) check is remembered briefly, keyed by an HMAC of the pair and
valid only while the user's stored hash is unchanged: twine sends the password with every
upload and 200 uploads must not cost 200 bcrypt runs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections import OrderedDict
from pathlib import Path

import bcrypt

TOKEN_LIFETIME = 36000  # seconds, as devpi-server (10 hours)
DEFAULT_BCRYPT_ROUNDS = 12
_VERIFIED_TTL = 600.0
_VERIFIED_MAX = 4096


def hash_password(password: str, rounds: int = DEFAULT_BCRYPT_ROUNDS) -> str:
    """A bcrypt hash. bcrypt only looks at 72 bytes, so longer passwords are pre-hashed."""
    return bcrypt.hashpw(_prepare(password), bcrypt.gensalt(rounds)).decode("ascii")


# Costs a stored hash may have: below is no protection, above stalls a thread for minutes
# to hours per check (a caller-chosen cost-31 hash was a denial of service).
BCRYPT_MIN_COST = 4
BCRYPT_MAX_COST = 14
_BCRYPT_RE = re.compile(r"\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}")


def bcrypt_cost(pwhash: str) -> int | None:
    """The cost of a well-formed bcrypt hash, else None."""
    match = _BCRYPT_RE.fullmatch(pwhash)
    return int(match.group(1)) if match else None


def acceptable_pwhash(pwhash: object) -> str | None:
    """Why ``pwhash`` may not be stored, or None if it may."""
    if not isinstance(pwhash, str):
        return "pwhash must be a bcrypt hash"
    cost = bcrypt_cost(pwhash)
    if cost is None:
        return "pwhash must be a bcrypt hash"
    if not BCRYPT_MIN_COST <= cost <= BCRYPT_MAX_COST:
        return f"bcrypt cost {cost} is outside {BCRYPT_MIN_COST}..{BCRYPT_MAX_COST}"
    return None


def bcrypt_rounds(text: str | int) -> int:
    """A --bcrypt-rounds value: a cost whose hashes check_password will accept."""
    rounds = int(text)
    if not BCRYPT_MIN_COST <= rounds <= BCRYPT_MAX_COST:
        raise ValueError(f"bcrypt rounds must be {BCRYPT_MIN_COST}..{BCRYPT_MAX_COST}")
    return rounds


def check_password(password: str, pwhash: str) -> bool:
    """False for wrong passwords and for hashes of a cost we refuse to spend time on."""
    if acceptable_pwhash(pwhash) is not None:
        return False
    try:
        return bcrypt.checkpw(_prepare(password), pwhash.encode("ascii"))
    except ValueError:
        return False


def _prepare(password: str) -> bytes:
    raw = password.encode("utf-8")
    if len(raw) > 72:
        raw = base64.b64encode(hashlib.sha256(raw).digest())
    return raw


def load_or_create_secret(path: Path) -> bytes:
    """The token-signing secret; created (0600, 32 random bytes) if missing."""
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise PermissionError(
                f"secret file {path} is readable by others; run: chmod 600 {path}"
            )
        data = path.read_bytes()
        if len(data) < 32:
            raise ValueError(f"secret file {path} must hold at least 32 bytes")
        return data
    path.parent.mkdir(parents=True, exist_ok=True)
    data = secrets.token_bytes(32)
    # A temp file of its own, linked (not renamed) into place: nodes sharing the file that
    # start together create it once, and the one that loses uses the winner's secret.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return load_or_create_secret(path)
    finally:
        tmp.unlink(missing_ok=True)
    return data


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Issues and checks ``<payload>.<signature>`` tokens (HMAC-SHA256 over the payload).

    The payload binds the user, an expiry time and a fingerprint of the user's password hash,
    so changing a password revokes every token issued before.
    """

    PREFIX = "devpid1."

    def __init__(self, secret: bytes, *, clock: object = None) -> None:
        self._key = hashlib.sha256(b"devpid-token\0" + secret).digest()
        self._now = getattr(clock, "seconds", time.time)

    def fingerprint(self, pwhash: str) -> str:
        return _b64(hmac.new(self._key, pwhash.encode(), hashlib.sha256).digest()[:9])

    def issue(self, user: str, pwhash: str, lifetime: int = TOKEN_LIFETIME) -> str:
        payload = json.dumps(
            {"u": user, "e": int(self._now()) + lifetime, "f": self.fingerprint(pwhash)},
            separators=(",", ":"),
        ).encode()
        body = _b64(payload)
        sig = _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())
        return f"{self.PREFIX}{body}.{sig}"

    def looks_like_token(self, secret: str) -> bool:
        return secret.startswith(self.PREFIX)

    def verify(self, token: str, user: str, pwhash: str) -> bool:
        """True if ``token`` was issued by us for ``user``, is unexpired and still current."""
        if not token.startswith(self.PREFIX):
            return False
        try:
            body, sig = token[len(self.PREFIX) :].split(".")
            expected = _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())
            if not hmac.compare_digest(sig, expected):
                return False
            payload = json.loads(_unb64(body))
        except (ValueError, TypeError):
            return False
        return (
            isinstance(payload, dict)
            and payload.get("u") == user
            and isinstance(payload.get("e"), int)
            and payload["e"] > self._now()
            and hmac.compare_digest(str(payload.get("f")), self.fingerprint(pwhash))
        )

    def expires(self, token: str) -> float | None:
        """The expiry (epoch seconds) written in a token ``verify`` accepted."""
        try:
            payload = json.loads(_unb64(token[len(self.PREFIX):].split(".")[0]))
        except (ValueError, TypeError, IndexError):
            return None
        e = payload.get("e") if isinstance(payload, dict) else None
        return float(e) if isinstance(e, int) else None

    def sign(self, data: bytes) -> str:
        """A plain HMAC of ``data`` (replication requests, short-lived capability URLs)."""
        return _b64(hmac.new(self._key, data, hashlib.sha256).digest())


class VerifiedPasswords:
    """A small bounded memory of recently verified (user, password) pairs."""

    def __init__(self, secret: bytes) -> None:
        self._key = hashlib.sha256(b"devpid-verified\0" + secret).digest()
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def _id(self, user: str, password: str) -> str:
        return hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).hexdigest()

    def known(self, user: str, password: str, pwhash: str) -> bool:
        entry = self._entries.get(self._id(user, password))
        return entry is not None and entry[0] == pwhash and entry[1] > time.monotonic()

    def remember(self, user: str, password: str, pwhash: str) -> None:
        self._entries[self._id(user, password)] = (pwhash, time.monotonic() + _VERIFIED_TTL)
        while len(self._entries) > _VERIFIED_MAX:
            self._entries.popitem(last=False)


# -- permissions -------------------------------------------------------------------------
# The rules live in devpid/domain/permissions.py; these names stay importable from here.
from devpid.domain.permissions import (  # noqa: E402, F401
    ANONYMOUS,
    AUTHENTICATED,
    acl_allows,
    can_create_user,
    can_delete_entry,
    can_manage_index,
    can_manage_user,
    can_set_mirror,
    can_upload,
)
