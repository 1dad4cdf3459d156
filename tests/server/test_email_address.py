"""Email addresses are validated strictly and normalized; nothing injectable gets through."""

from __future__ import annotations

import pytest

from tidesync.server.email_address import InvalidEmailError, normalize_email


@pytest.mark.parametrize("raw, expected", [
    ("alice@example.com", "alice@example.com"),
    ("  Alice@Example.COM ", "alice@example.com"),
    ("first.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk"),
    ("o'brien@example.com", "o'brien@example.com"),
    ("jos\u00e9@b\u00fccher.example", "jos\u00e9@xn--bcher-kva.example"),
    ("jose\u0301@example.com", "jos\u00e9@example.com"),   # NFC: one account, whatever the keyboard
])
def test_valid_addresses_are_normalized(raw, expected):
    assert normalize_email(raw) == expected


@pytest.mark.parametrize("raw", [
    "alice@example.com\r\nBcc: victim@example.org",   # header injection
    "alice@example.com\nX-Evil: 1",
    "alice@example.com, bob@example.com",              # a second recipient
    "alice@example.com;bob@example.com",
    "Alice <alice@example.com>",                       # display names
    '"alice"@example.com',                             # quoted local parts
    "alice@[127.0.0.1]",                               # IP literals
    "alice@localhost",                                 # no dot in the domain
    "alice@example.com\x00",
    "alice\u200b@example.com",                         # invisible characters
    "al ice@example.com",
    "alice@@example.com", "@example.com", "alice@", "alice", "",
    ".alice@example.com", "ali..ce@example.com",
    "alice@-example.com", "alice@example..com", "alice@example.123",
    "a" * 65 + "@example.com", "a@" + "b" * 250 + ".com",
    "alice%0d%0a@example.com\r",
])
def test_invalid_addresses_are_refused(raw):
    with pytest.raises(InvalidEmailError) as err:
        normalize_email(raw)
    assert err.value.code == "invalid_email"


@pytest.mark.parametrize("raw", [None, 42, ["a@b.co"], {"$ne": None}])
def test_only_strings(raw):
    with pytest.raises(InvalidEmailError):
        normalize_email(raw)
