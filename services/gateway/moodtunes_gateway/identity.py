"""Who is asking: the owner a job and its feedback belong to.

Two kinds of clients, two proofs, both issued by the gateway and never taken on the client's word:
- a program sends an API key (`Authorization: Bearer mt_...`, moodtunes.api_keys): owner `key:<id>`;
- a browser (or any client without a key) gets a session cookie signed with the deployment's
  `session_secret` on its first job: owner `session:<random id>`. HttpOnly, so page scripts never
  see it; SameSite=Lax, so another site cannot make the browser use it on a POST.
A bad key is refused (401); a cookie that does not verify is ignored, as if there were none.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass

import psycopg
from fastapi import Request, Response
from itsdangerous import BadSignature, TimestampSigner
from starlette.concurrency import run_in_threadpool

from moodtunes import api_keys
from moodtunes.config import Settings
from moodtunes_gateway import backends
from moodtunes_gateway.errors import APIError

log = logging.getLogger("moodtunes.gateway")
SESSION_COOKIE = "moodtunes_session"
SESSION_PREFIX = "session:"
SESSION_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Owner:
    key: str  # what jobs.client_key records: "session:<id>" or "key:<id>"
    limit_key: str  # what rate limits count: the owner, or the client's IP for a brand-new session
    new_session: str | None = None  # a signed session cookie to send back (first job of a browser)


class Sessions:
    """Signs and checks session cookies with the deployment's secret."""

    def __init__(self, settings: Settings):
        secret = settings.session_secret.get_secret_value() if settings.session_secret else None
        if not secret:
            if settings.environment == "production":
                raise RuntimeError(
                    "SESSION_SECRET is not set: in production every gateway replica needs the same "
                    "secret (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
                )
            # Development: sessions last as long as this process. Set SESSION_SECRET to keep them.
            log.warning("SESSION_SECRET is not set: using a random one; sessions end with this process")
            secret = secrets.token_urlsafe(48)
        self.signer = TimestampSigner(secret, salt="moodtunes.session")
        self.max_age_s = settings.session_max_age_s
        self.secure = settings.session_cookie_secure or settings.environment == "production"

    def new(self) -> tuple[str, str]:
        """(session id, signed cookie value) for a client that has none."""
        session_id = secrets.token_hex(16)
        return session_id, self.signer.sign(session_id).decode()

    def verify(self, cookie: str | None) -> str | None:
        """The session id in a cookie this deployment signed and that has not expired, else None."""
        if not cookie:
            return None
        try:
            session_id = self.signer.unsign(cookie, max_age=self.max_age_s).decode()
        except BadSignature:  # also SignatureExpired
            return None
        return session_id if SESSION_ID.match(session_id) else None

    def set_cookie(self, response: Response, cookie: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=self.max_age_s,
            httponly=True,
            samesite="lax",
            secure=self.secure,
        )


def _unauthorized(code: str, message: str) -> APIError:
    return APIError(401, code, message, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def _key_owner(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("invalid_api_key", "Send an API key as `Authorization: Bearer mt_...`.")
    backends.use_gateway_pool()
    try:
        key = api_keys.verify(token.strip())
    except psycopg.OperationalError as exc:
        raise backends.database_unavailable(exc) from exc
    if key is None:
        raise _unauthorized("invalid_api_key", "This API key is not valid.")
    if key.revoked:
        raise _unauthorized("api_key_revoked", "This API key was revoked; ask for a new one.")
    return key.owner


def client_ip(request: Request) -> str:
    """The peer's address (behind a proxy, run uvicorn with --proxy-headers so this is the client's)."""
    return request.client.host if request.client else "unknown"


async def current_owner(request: Request) -> Owner | None:
    """The caller's identity, or None for a caller with neither a key nor a valid session.
    An API key costs a database lookup, in the thread pool; a session cookie is only a signature
    check, done on the event loop (a thread-pool hop costs about 0.1 ms of CPU per request)."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        owner = await run_in_threadpool(_key_owner, authorization)
        return Owner(owner, owner)
    session_id = request.app.state.sessions.verify(request.cookies.get(SESSION_COOKIE))
    if session_id is None:
        return None
    owner = SESSION_PREFIX + session_id
    return Owner(owner, owner)


async def owner_or_new_session(request: Request) -> Owner:
    """The caller's identity; a caller without one starts a session here (its cookie is set on the
    response). Until its cookie comes back, such a caller is counted by IP, or dropping the cookie
    would dodge the rate limit."""
    owner = await current_owner(request)
    if owner is not None:
        return owner
    session_id, cookie = request.app.state.sessions.new()
    return Owner(SESSION_PREFIX + session_id, "ip:" + client_ip(request), new_session=cookie)
