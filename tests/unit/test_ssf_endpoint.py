"""A push endpoint_url as config.check accepts it and http1.endpoint sends to it: what the push client
could not send to (a port out of range or not a number, user information, a host that is no host name)
is refused when the stream is created or updated, with a reason; the rest is encoded for the wire."""

from __future__ import annotations

import pytest

from auth_service.errors import InvalidRequest
from auth_service.ssf.config import PUSH, Delivery, check
from auth_service.ssf.http1 import Connection, endpoint


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://h.example:99999/x", "port"),
        ("https://h.example:65536/x", "port"),
        ("https://h.example:abc/x", "port"),
        ("https://h.example:0/x", "port"),
        ("https://h.example:/x", "port"),
        ("https://user:secret@h.example/x", "user information"),
        ("https://h exa.example/x", "host name"),
        ("https://[::zz]/x", "IPv6"),
        ("https://h.example/x#f", "fragment"),
    ],
)
def test_an_endpoint_the_push_client_cannot_send_to_is_refused(url: str, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        check(Delivery(method=PUSH, endpoint_url=url), None, allow_http=False)
    with pytest.raises(ValueError, match=reason):
        Connection(url, timeout=1)


def test_an_endpoint_is_encoded_for_the_wire() -> None:
    idn = endpoint("https://B\u00fccher.example/caf\u00e9 1?a=\u00fc")
    assert (idn.host, idn.port, idn.tls) == ("xn--bcher-kva.example", 443, True)
    assert (idn.authority, idn.target) == ("xn--bcher-kva.example", "/caf%C3%A9%201?a=%C3%BC")
    ipv6 = endpoint("http://[::1]:8080")
    assert (ipv6.host, ipv6.port, ipv6.authority, ipv6.target) == ("::1", 8080, "[::1]:8080", "/")
    assert endpoint("https://h.example:443/x").authority == "h.example"
    accepted = check(Delivery(method=PUSH, endpoint_url="https://h.example:8443/x"), None, allow_http=False)
    assert accepted.endpoint_url == "https://h.example:8443/x"
