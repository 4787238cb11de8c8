"""Webhook signing against the reference implementation, and the SSRF address rules."""

from __future__ import annotations

import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from services.edge.webhooks import signing, ssrf


def test_our_signature_verifies_with_the_reference_and_only_with_its_secret() -> None:
    secret, other = signing.new_secret(), signing.new_secret()
    assert secret.startswith("whsec_") and secret != other
    now = int(time.time())
    body = b'{"id":"evt_1","type":"task.succeeded"}'
    headers = signing.headers([secret], "msg_1", now, body)
    assert Webhook(secret).verify(body, headers)["id"] == "evt_1"
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)
    stale = signing.headers([secret], "msg_1", now - 301, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, stale)
    both = signing.headers([secret, other], "msg_1", now, body)
    assert Webhook(other).verify(body, both) and Webhook(secret).verify(body, both)


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1",
                                "169.254.169.254", "169.254.1.1", "::1", "fe80::1",
                                "fc00::1", "::ffff:10.0.0.1", "0.0.0.0", "100.100.100.200",
                                "224.0.0.1"])
def test_private_and_special_addresses_are_blocked(ip: str) -> None:
    assert not ssrf.allowed_ip(ip, allow_private=False)


@pytest.mark.parametrize("ip", ["169.254.169.254", "0.0.0.0", "fd00:ec2::254"])
def test_metadata_addresses_stay_blocked_even_when_private_is_allowed(ip: str) -> None:
    assert not ssrf.allowed_ip(ip, allow_private=True)


def test_public_addresses_pass_and_private_ones_with_the_setting() -> None:
    assert ssrf.allowed_ip("93.184.216.34", allow_private=False)
    assert ssrf.allowed_ip("2606:4700::1111", allow_private=False)
    assert ssrf.allowed_ip("127.0.0.1", allow_private=True)
    assert ssrf.allowed_ip("10.0.0.1", allow_private=True)
