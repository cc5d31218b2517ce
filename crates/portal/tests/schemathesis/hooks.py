"""Teaches schemathesis the string formats of Postern's OpenAPI document.

The document names formats of its own where JSON Schema has no word for a
rule (a CIDR prefix a resource may cover, a time window, ...); each is
described in `crates/portal/src/api/schemas.rs`. A tester that does not know
a format generates arbitrary strings for it, which the portal rightly refuses;
these strategies generate values of the format instead. Loaded by
`tests/schemathesis.rs` with SCHEMATHESIS_HOOKS=hooks.
"""

import base64
import struct

import schemathesis
from hypothesis import strategies as st

octet = st.integers(0, 255)
# Private and documentation ranges: never loopback, link-local, multicast
# or the tunnel's own ranges, which resources may not cover.
ipv4_private = st.one_of(
    st.builds("10.{}.{}.{}".format, octet, octet, st.integers(1, 254)),
    st.builds("192.168.{}.{}".format, octet, st.integers(1, 254)),
    st.builds("172.{}.{}.{}".format, st.integers(16, 31), octet, st.integers(1, 254)),
)
ipv6_doc = st.builds("2001:db8:{:x}::{:x}".format, st.integers(0, 0xFFFF), st.integers(1, 0xFFFF))
resource_ip = st.one_of(ipv4_private, ipv6_doc)
resource_cidr = st.one_of(
    st.builds("10.{}.0.0/{}".format, octet, st.integers(16, 32)),
    st.builds("192.168.{}.0/{}".format, octet, st.integers(24, 32)),
    st.builds("2001:db8:{:x}::/{}".format, st.integers(0, 0xFFFF), st.integers(48, 128)),
)
any_ipv4 = st.builds("{}.{}.{}.{}".format, octet, octet, octet, octet)
any_ipv6 = st.builds(
    "{:x}:{:x}::{:x}".format, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)
)
ip_or_cidr = st.one_of(
    any_ipv4,
    any_ipv6,
    st.builds("{}/{}".format, any_ipv4, st.integers(0, 32)),
    st.builds("{}/{}".format, any_ipv6, st.integers(0, 128)),
)
# An exclusion names some part of the internet, not all of it.
exclusion = st.one_of(
    any_ipv4,
    st.builds("{}/{}".format, any_ipv4, st.integers(1, 32)),
    st.builds("{}/{}".format, any_ipv6, st.integers(1, 128)),
)
label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?\Z")
dns_pattern = st.builds(
    lambda prefix, labels, tld: prefix + ".".join(labels + [tld]),
    st.sampled_from(["", "*.", "?."]),
    st.lists(label, min_size=1, max_size=3),
    st.sampled_from(["example", "test", "internal"]),
)
port = st.integers(1, 65535)
port_range = st.one_of(
    st.builds(str, port),
    st.tuples(port, port).map(lambda p: f"{min(p)}-{max(p)}"),
)
port_list = st.lists(port_range, min_size=1, max_size=4).map(",".join)
minute_of_day = st.integers(0, 24 * 60 - 1)
time_window = st.builds(
    lambda days, bounds, zone: "{}/{:02}:{:02}-{:02}:{:02}/{}".format(
        "".join(days), bounds[0] // 60, bounds[0] % 60, bounds[1] // 60, bounds[1] % 60, zone
    ),
    st.lists(st.sampled_from("MTWRFSU"), min_size=1, max_size=7, unique=True),
    st.tuples(minute_of_day, minute_of_day)
    .filter(lambda b: b[0] != b[1])
    .map(lambda b: (min(b), max(b))),
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"]),
)
issuer_url = st.builds(
    "https://{}.example.com/realms/{}".format, label, label
)
# The portal's cursors: a tag and a log position (any position is a page).
page_cursor = st.integers(1, 2**63 - 1).map(
    lambda n: base64.urlsafe_b64encode(b"pc1" + struct.pack(">q", n)).rstrip(b"=").decode()
)

# LDAP servers on loopback's closed port 1: what the tester creates is
# never reached for (the sync operation is not run by it; see
# tests/schemathesis.rs), and nothing could leave the machine if it were.
ldap_url = st.sampled_from(["ldap://127.0.0.1:1", "ldaps://127.0.0.1:1", "ldap://[::1]:1"])
# A self-signed test CA (P-256); any PEM certificate is accepted.
pem_certificates = st.just(
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBlTCCATugAwIBAgIUMOjMhS/vbpOPOrOYtpWKihICWbUwCgYIKoZIzj0EAwIw\n"
    "HzEdMBsGA1UEAwwUU2NoZW1hdGhlc2lzIHRlc3QgQ0EwIBcNMjYxMjAyMTM1MzE0\n"
    "WhgPMjEyNjExMDgxMzUzMTRaMB8xHTAbBgNVBAMMFFNjaGVtYXRoZXNpcyB0ZXN0\n"
    "IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEc+75RPat+JLkVkI4cotIy6gb\n"
    "ygApY1e7yw5g5ZyqXq/N4bEu6LawyoWBheTZhT64zcHo3e8dKi4Gsii2roqPM6NT\n"
    "MFEwHQYDVR0OBBYEFPaoF+aN6y+rGInNw3Y6leM2yMaWMB8GA1UdIwQYMBaAFPao\n"
    "F+aN6y+rGInNw3Y6leM2yMaWMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwID\n"
    "SAAwRQIhANuzVlnZTNqatz1lab9PwVa1/F5o6fxTJ+2PeazbLN7/AiBBESKA1DcD\n"
    "1Ef3k3J6mHWHe6BIllBiooR5nfNlQ2UdPA==\n"
    "-----END CERTIFICATE-----\n"
)

for name, strategy in {
    "resource-ip": resource_ip,
    "resource-cidr": resource_cidr,
    "ip-or-cidr": ip_or_cidr,
    "exclusion": exclusion,
    "dns-pattern": dns_pattern,
    "port-range": port_range,
    "port-list": port_list,
    "time-window": time_window,
    "issuer-url": issuer_url,
    "page-cursor": page_cursor,
    "ldap-url": ldap_url,
    "pem-certificates": pem_certificates,
}.items():
    schemathesis.openapi.format(name, strategy)
