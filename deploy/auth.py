"""Admin routes (register, replace, remove, train) need `Authorization: Bearer <admin token>`."""

from __future__ import annotations

import hmac

from .errors import ApiError


def require_admin(authorization: str | None, token: str | None) -> None:
    if not token:
        raise ApiError(403, "admin routes are disabled: no admin token is configured "
                            "(set MOSASERVE_ADMIN_TOKEN or admin_token in the config)")
    scheme, _, given = (authorization or "").partition(" ")
    # Compare in constant time so the token cannot be guessed byte by byte from response times.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "missing or wrong admin token: send Authorization: Bearer <token>")
