"""API keys: how a program (not a browser) proves who it is to the gateway.

A key is a high-entropy token `mt_<id>_<secret>`, shown once when it is made; only its SHA-256 is
stored, so the table alone lets nobody in (a slow password hash buys nothing for 256 random bits).
`id` is public: `moodtunes keys list` shows it, `revoke` takes it, and a job made with the key is
owned by `key:<id>`. Clients send the token as `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from moodtunes.db import connection, statement

PREFIX = "mt_"
OWNER_PREFIX = "key:"  # jobs.client_key of a job made with a key
TOKEN = re.compile(r"^mt_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")
COLUMNS = "id, name, created_at, last_used_at, revoked_at"
TOUCH_EVERY_S = 60  # last_used_at is refreshed at most this often, not a write per request


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def owner(self) -> str:
        """What jobs.client_key records for work done with this key."""
        return OWNER_PREFIX + self.id


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def create(name: str = "") -> tuple[ApiKey, str]:
    """A new key and its token; the token is not kept anywhere, so the caller shows it now."""
    key_id = secrets.token_hex(6)
    token = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    with connection() as conn:
        row = conn.execute(
            f"INSERT INTO api_keys (id, name, token_sha256) VALUES (%s, %s, %s) RETURNING {COLUMNS}",
            (key_id, name, digest(token)),
        ).fetchone()
    return ApiKey(**row), token


def list_keys() -> list[ApiKey]:
    with connection() as conn:
        rows = conn.execute(f"SELECT {COLUMNS} FROM api_keys ORDER BY created_at, id").fetchall()
    return [ApiKey(**row) for row in rows]


def revoke(key_id: str) -> ApiKey | None:
    """Revokes a key for good (a revoked key never works again); None when there is no such key.
    Revoking twice keeps the first revocation time."""
    with connection() as conn:
        row = conn.execute(
            f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s RETURNING {COLUMNS}",
            (key_id,),
        ).fetchone()
    return ApiKey(**row) if row else None


def verify(token: str) -> ApiKey | None:
    """The key a token belongs to (check `.revoked`), or None for a token that was never issued.
    One statement: looks the key up by its hash and refreshes last_used_at now and then."""
    if not TOKEN.match(token):
        return None  # not one of ours: no database round trip
    with statement() as conn:
        row = conn.execute(
            f"""WITH found AS (SELECT {COLUMNS} FROM api_keys WHERE token_sha256 = %(digest)s),
                    touched AS (
                        UPDATE api_keys SET last_used_at = now()
                        WHERE id IN (SELECT id FROM found WHERE revoked_at IS NULL
                                     AND (last_used_at IS NULL
                                          OR last_used_at < now() - make_interval(secs => %(every)s))))
                SELECT * FROM found""",
            {"digest": digest(token), "every": TOUCH_EVERY_S},
        ).fetchone()
    return ApiKey(**row) if row else None
