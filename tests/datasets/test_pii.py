"""PII scrubbing: each kind found where it is, left alone where a manual only looks like it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tasks.datasets.pii import KINDS, find_pii, scrub_pii

TESTS = Path(__file__).parents[1]
GOLDEN = TESTS / "golden"

# Token-shaped test values are assembled here so that no secret scanner mistakes this file
# for a leak.
RANDOM_62 = "q8Zt2LmX9vB4nR7kW1pYc3Hd6Jf0Gs5Ne"
FAKE = {
    "aws": "AKIA" + "Q2W3E4R5T6Y7U8I9",
    "github": "ghp_" + RANDOM_62 + "abc",
    "github_pat": "github_pat_" + "11AB2CD3E" + "_" + RANDOM_62 * 2,
    "openai": "sk-" + "proj-" + RANDOM_62 + "_" + RANDOM_62,
    "slack": "xoxb-" + "123456789012-1234567890123-" + RANDOM_62[:24],
    "google": "AIza" + RANDOM_62 + "_x",
    "jwt": ".".join(
        ["eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9", "eyJzdWIiOiIxMjM0NTY3ODkwIn0", RANDOM_62]
    ),
}
PEM = (
    "\n".join(
        ["-----BEGIN RSA PRIVATE KEY-----", "MIIEow" + RANDOM_62, RANDOM_62 + "==", "-----END RSA"]
    )
    + " PRIVATE KEY-----"
)


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        ("email", "Write to jane.doe@mail.acme.io for access.", "jane.doe@mail.acme.io"),
        ("email", "Maintainer: <john+pg@corp.co.uk>", "john+pg@corp.co.uk"),
        (
            "email",
            "Report bugs to pgsql-bugs@lists.postgresql.org.",
            "pgsql-bugs@lists.postgresql.org",
        ),
        ("phone", "Call (415) 555-0100 today", "(415) 555-0100"),
        ("phone", "Call 415-555-0100.", "415-555-0100"),
        ("phone", "Call 415.555.0100", "415.555.0100"),
        ("phone", "Toll free: 1-800-555-0100", "1-800-555-0100"),
        ("phone", "Office +1 415 555 0100", "+1 415 555 0100"),
        ("phone", "London +44 20 7946 0958", "+44 20 7946 0958"),
        ("phone", "London +44 (0)20 7946 0958", "+44 (0)20 7946 0958"),
        ("phone", "Berlin +49-30-1234567", "+49-30-1234567"),
        ("phone", "Paris +33 1 23 45 67 89", "+33 1 23 45 67 89"),
        ("ip", "host 10.0.0.1 is down", "10.0.0.1"),
        ("ip", "listen on 192.168.1.20:5432", "192.168.1.20"),
        ("ip", "netmask 255.255.255.0.", "255.255.255.0"),
        ("ip", "10.1.2.3 is the gateway", "10.1.2.3"),
        ("ip", "host all all ::1/128 trust", "::1"),
        ("ip", "ping fe80::1%eth0 now", "fe80::1%eth0"),
        ("ip", "at 2600:1f18:abcd:1234::42", "2600:1f18:abcd:1234::42"),
        ("ip", "full 1080:0:0:0:8:800:200C:417A form", "1080:0:0:0:8:800:200C:417A"),
        ("ip", "mapped ::ffff:10.1.2.3 address", "::ffff:10.1.2.3"),
        ("ip", "https://[2a00:1450:4001:82b::200e]:443/", "2a00:1450:4001:82b::200e"),
        ("secret", f"key id {FAKE['aws']} here", FAKE["aws"]),
        ("secret", f"GH_TOKEN {FAKE['github']}", FAKE["github"]),
        ("secret", f"use {FAKE['github_pat']}", FAKE["github_pat"]),
        ("secret", f"client = OpenAI(api_key={FAKE['openai']!r})", FAKE["openai"]),
        ("secret", f"SLACK {FAKE['slack']}", FAKE["slack"]),
        ("secret", f"maps?key {FAKE['google']}", FAKE["google"]),
        ("secret", f"cookie {FAKE['jwt']}", FAKE["jwt"]),
        ("secret", "Authorization: Bearer 8f3KzQ1vX9pL2mN7rT4wY6", "8f3KzQ1vX9pL2mN7rT4wY6"),
        ("secret", f"key file:\n\n{PEM}\n\nthen", PEM),
        ("secret", "api_key = 'q8Zt2LmX9vB4nR7kW1pY'", "q8Zt2LmX9vB4nR7kW1pY"),
        (
            "secret",
            "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYzQ",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzQ",
        ),
        ("secret", '{"client_secret": "3f9a2b7c81d04e6fa5b2c9d7"}', "3f9a2b7c81d04e6fa5b2c9d7"),
        ("secret", "postgresql://app:T4kq9Zr2Xw8Lm3Vp@db.internal/prod", "T4kq9Zr2Xw8Lm3Vp"),
    ],
)
def test_each_kind_is_found(kind: str, text: str, expected: str) -> None:
    assert [m.text for m in find_pii(text, {kind})] == [expected]
    [match] = find_pii(text, KINDS)
    assert (match.kind, text[match.start : match.end]) == (kind, expected)


@pytest.mark.parametrize(
    "text",
    [
        # e-mail look-alikes and documentation examples
        "Mail user@example.com or admin@mail.example.org or bob@host.test",
        "postgres@localhost is the default",
        "Decorate with @functools.wraps(wrapped)",
        "retina image icon@2x.png",
        "postgresql://user:secret@localhost:5432/mydb",
        "pip install pkg@1.2.3",
        # numbers of a manual
        "PostgreSQL 15.4.2 and 9.6.24 and 3.11.7",
        "port 5432, 8192 kB, 1.5 GB, 16384 32768 65536",
        "2023-01-15 12:30:45 and 2024-03-14 15:09:26.535897+01",
        "OID 1.3.6.1.4.1.2021 and LSN 0/16B3748",
        "ranges 1000-2000 and 100-999, ISBN 978-0-596-52068-7",
        "integer: -2147483648 to +2147483647; bigint up to +9223372036854775807",
        "totals 1,234,567,890 and 12.345.678.9012",
        "x + 1 2 3 and a +5 b",
        # IP look-alikes and documentation ranges
        "sequence 1.2.3.4.5 and 256.1.1.1 and 01.02.03.04",
        "time 12:30:45, MAC 00:1a:2b:3c:4d:5e",
        "std::string and std::vector<int>",
        "SELECT '1'::int, x::dec, now()::date, '5'::bytea",
        "s[::2] and s[1::2] and s[::-1] and a[b::c]",
        "hosts 192.0.2.1, 198.51.100.7, 203.0.113.9 and 2001:db8::1",
        "and 2001:DB8:0:0:8:800:200C:417A",
        "macaddr8 '08:00:2b:01:02:03:04:05' and '12:34:56:78:90:ab:cd:ef'",
        # section numbers, anchors and versions shaped like addresses
        "#### 24.2.2.1. Standard Collations",
        "**[24.2.2.1. Standard Collations](https://docs.test/collation.html#X)**",
        '<h4 class="title">26.3.6.1.\xa0Standalone Hot Backups</h4>',
        "see Section 9.7.3.1, and Sections 9.7.3.2 and 9.7.3.3 or section\n4.4.3.2",
        "the operating system provides version 2.3.4.5.",
        "[5.1](https://www.postgresql.org/docs/15/history.html#id-1.3.5.6)",
        # secret look-alikes
        "password=secret and PGPASSWORD=mypass",
        "password_encryption = scram-sha-256",
        "api_key=YOUR_API_KEY_HERE and token: <your-access-token-here>",
        "Authorization: Bearer $TOKEN or Bearer YOUR_ACCESS_TOKEN",
        "password=password12345678",
        "secret_key = os.environ['SECRET_KEY']",
        "sorted(words, key=cmp_to_key(locale.strcoll))",
        "passfile=/var/lib/postgresql/pgpass_file",
        "sk-learn and task-scheduler-configuration-option",
        "token = aaaa1111aaaa1111aaaa",
    ],
)
def test_look_alikes_are_left_alone(text: str) -> None:
    assert find_pii(text, KINDS) == []


def test_allowed_strings_are_never_masked() -> None:
    text = "Connect to 127.0.0.1 or ::1 or 10.1.2.3; mail Root@Corp.io or ops@corp.io"
    scrubbed = scrub_pii(text, KINDS, allow={"127.0.0.1", "::1", "root@corp.io", "localhost"})
    assert (
        scrubbed.text == "Connect to 127.0.0.1 or ::1 or <IP_ADDRESS>; mail Root@Corp.io or <EMAIL>"
    )
    assert scrubbed.counts == Counter({"ip": 1, "email": 1})


def test_allowed_networks_cover_the_addresses_inside_them() -> None:
    text = "from 127.0.0.2, 10.9.8.7, 172.20.143.89, fe80::7a31:c1ff and 63.87.254.249"
    allow = ("127.0.0.0/8", "10.0.0.0/8", "fe80::/10", "not a network")
    assert [m.text for m in find_pii(text, KINDS, allow)] == ["172.20.143.89", "63.87.254.249"]


def test_counts_by_kind_and_only_the_kinds_asked_for() -> None:
    text = (
        "Ask ann@corp.io or bo@corp.io, call 415-555-0100, hosts 10.0.0.1, 10.0.0.2 and fe80::1."
        " Bearer 8f3KzQ1vX9pL2mN7rT4wY6"
    )
    scrubbed = scrub_pii(text, KINDS)
    assert scrubbed.counts == Counter({"email": 2, "ip": 3, "phone": 1, "secret": 1})
    assert scrubbed.text == (
        "Ask <EMAIL> or <EMAIL>, call <PHONE>, hosts <IP_ADDRESS>, <IP_ADDRESS> and <IP_ADDRESS>."
        " Bearer <SECRET>"
    )
    only_ips = scrub_pii(text, {"ip"})
    assert only_ips.counts == Counter({"ip": 3})
    assert "ann@corp.io" in only_ips.text and "<IP_ADDRESS>" in only_ips.text
    assert scrub_pii(text, ()).text == text


def test_unknown_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="credit_card"):
        scrub_pii("x", {"email", "credit_card"})


def test_overlaps_go_to_the_secret_and_matches_come_in_text_order() -> None:
    text = f"Authorization: Bearer {FAKE['jwt']} from 10.1.2.3"
    matches = find_pii(text, KINDS)
    assert [(m.kind, m.text) for m in matches] == [("secret", FAKE["jwt"]), ("ip", "10.1.2.3")]
    uri = "postgresql://app:T4kq9Zr2Xw8Lm3Vp@10.1.2.3/db"
    assert scrub_pii(uri, KINDS).text == "postgresql://app:<SECRET>@<IP_ADDRESS>/db"


def find_real_page_matches(pattern: str) -> set[tuple[str, str, str]]:
    return {
        (path.name, m.kind, m.text)
        for path in sorted(TESTS.glob(pattern))
        for m in find_pii(path.read_text(encoding="utf-8"), KINDS)
    }


def test_converted_real_pages_have_nothing_to_mask() -> None:
    """The golden Markdown pages (PostgreSQL and Python manuals) are full of versions,
    sizes, times, OIDs, section numbers, casts and decorators, and hold no PII."""
    assert find_real_page_matches("golden/*.md") == set()


def test_raw_real_pages_match_only_the_docs_mailing_list() -> None:
    """The raw PostgreSQL pages keep their footer, which names a real mailing list; a new
    entry here is either a false positive to fix or real PII to confirm."""
    # Real pages only: the other fixture sites are hand-written.
    found = find_real_page_matches("golden/*.html") | find_real_page_matches(
        "fixtures/sites/postgresql-15/*.html"
    )
    real = TESTS.glob("fixtures/sites/postgresql-15/*.html")
    pages = [p.name for p in (*GOLDEN.glob("pg_*.html"), *real)]
    assert len(pages) == 9
    assert found == {(name, "email", "pgsql-docs@lists.postgresql.org") for name in pages}
