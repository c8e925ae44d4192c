"""A holder's Secure Token Service for test profiles (EDC's remote-STS form, OAuth2 client
credentials): what the DCP TCK and EDC ask for the self-issued tokens they send or forward."""

from __future__ import annotations

import hmac
import logging
import time
import uuid

from aiohttp import web

from connector.core import dcp
from connector.core.identity import SigningKey
from connector.service.auth import Identity

log = logging.getLogger("connector.test-sts")


async def sts_token(request: web.Request, *, identity: Identity, key: SigningKey, secret: bytes,
                    client_id: str | None, ttl_s: int) -> web.Response:
    """``POST`` form ``client_id``, ``client_secret``, ``audience`` and either
    ``bearer_access_scope`` (mint an access token letting ``audience`` read those scopes from
    our Credential Service) or ``token`` (forward that access token); answers the self-issued
    token carrying it. ``client_id`` None accepts any client with the secret."""
    form = await request.post()
    given = str(form.get("client_secret", "")).encode()
    if ((client_id is not None and form.get("client_id") != client_id)
            or not hmac.compare_digest(given, secret)):
        log.info("STS: refused client %r", str(form.get("client_id", ""))[:200])
        return web.json_response({"error": "invalid_client"}, status=401)
    audience = str(form.get("audience", ""))
    scopes, access = str(form.get("bearer_access_scope", "")).split(), str(form.get("token", ""))
    if not audience.startswith("did:") or not (scopes or access):
        return web.json_response({"error": "invalid_request"}, status=400)
    now = int(time.time())
    if not access:
        access = dcp.issue_access_token(key, kid=identity.kid, holder=identity.did,
                                        verifier=audience, scopes=scopes, now=now,
                                        jti=str(uuid.uuid4()), ttl_s=ttl_s)
    log.info("STS: token for %s (%s)", audience, f"scopes {scopes}" if scopes else "forwarded")
    return web.json_response({"access_token": identity.dcp_token(audience, access, now=now),
                              "token_type": "Bearer", "expires_in": ttl_s})
