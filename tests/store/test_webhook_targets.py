"""Where a webhook may go (``store.webhook_targets``): the URL's form, and every address its
host resolves to public unless an operator allowed its network."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import anyio
import pytest

from store.webhook_targets import UrlRefused, parse_url, refusal, resolve

LOOPBACK = [ip_network("127.0.0.0/8"), ip_network("::1/128")]


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-public"),  # shared address space (carrier-grade NAT)
        ("::ffff:127.0.0.1", "loopback address (127.0.0.1 inside it)"),
        ("::ffff:169.254.169.254", "link-local address (169.254.169.254 inside it)"),
        ("64:ff9b::a00:1", "private address (10.0.0.1 inside it)"),
        ("2002:a00:1::", "private address (10.0.0.1 inside it)"),
    ],
)
def test_non_public_addresses_are_refused_naming_what_they_are(address: str, kind: str) -> None:
    reason = refusal(ip_address(address))
    assert reason is not None
    assert kind in reason


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ip_address(address)) is None


def test_allowed_networks_open_only_themselves() -> None:
    assert refusal(ip_address("127.0.0.1"), LOOPBACK) is None
    assert refusal(ip_address("::ffff:127.0.0.1"), LOOPBACK) is None
    assert refusal(ip_address("::1"), LOOPBACK) is None
    assert refusal(ip_address("10.0.0.1"), LOOPBACK) is not None
    assert refusal(ip_address("169.254.169.254"), LOOPBACK) is not None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://example.com/x", "scheme is 'ftp'"),
        ("file:///etc/passwd", "scheme is 'file'"),
        ("example.com/hooks", "scheme"),
        ("http://user:pw@example.com/", "user name or password"),
        ("http:///nohost", "no host"),
        ("https://example.com/" + "a" * 2048, "longer than 2048"),
    ],
)
def test_bad_url_forms_are_refused_saying_what_to_change(url: str, says: str) -> None:
    with pytest.raises(UrlRefused, match=says):
        parse_url(url)


def test_a_url_keeps_its_host_for_the_host_header_and_connects_to_the_checked_address() -> None:
    target = parse_url("https://Example.COM:8443/a/b?c=1")
    assert (target.host, target.port, target.host_header) == (
        "example.com",
        8443,
        "example.com:8443",
    )
    assert str(target.at(ip_address("93.184.215.14"))) == "https://93.184.215.14:8443/a/b?c=1"
    assert str(target.at(ip_address("2606:4700::1"))) == "https://[2606:4700::1]:8443/a/b?c=1"
    assert parse_url("http://example.com/").host_header == "example.com"


@pytest.mark.parametrize(
    "url", ["http://localhost:9/", "http://127.0.0.1/", "http://[::1]/", "http://0x7f.1/"]
)
def test_resolved_addresses_are_checked_whatever_the_spelling(url: str) -> None:
    with pytest.raises(UrlRefused, match="KDSERVE_WEBHOOK_ALLOWED_NETWORKS"):
        anyio.run(resolve, parse_url(url))


def test_an_allowed_loopback_resolves_to_the_address_to_connect_to() -> None:
    addresses = anyio.run(resolve, parse_url("http://127.0.0.1:9/"), LOOPBACK)
    assert addresses == [ip_address("127.0.0.1")]


def test_the_refusal_names_the_address_and_the_setting() -> None:
    with pytest.raises(UrlRefused) as err:
        anyio.run(resolve, parse_url("http://10.0.0.1/hooks"))
    assert str(err.value) == (
        "10.0.0.1 resolves to 10.0.0.1, a private address; webhooks are sent to public "
        "addresses only. An operator can allow a network with KDSERVE_WEBHOOK_ALLOWED_NETWORKS "
        "(e.g. KDSERVE_WEBHOOK_ALLOWED_NETWORKS=10.0.0.1/32)"
    )
