"""Standard Webhooks signing: ``whsec_<base64>`` secrets and the ``webhook-*`` headers.

The signature is ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``; during a rotation both
the new and the previous secret sign, space-separated, so a receiver holding either verifies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "whsec_"


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(signing_secrets: list[str], msg_id: str, timestamp: int,
            body: bytes) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(signature(s, msg_id, timestamp, body)
                                          for s in signing_secrets),
            "content-type": "application/json"}
