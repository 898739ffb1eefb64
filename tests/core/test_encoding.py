"""Reading a page's encoding from its bytes: only text encodings count, and a page whose
bytes contradict its declaration is read with the likely encoding, or flagged as damaged."""

from __future__ import annotations

from tasks.core.encoding import choose_encoding, detect_encoding, parse_header_charset


def test_declared_then_guessed_then_damaged() -> None:
    assert choose_encoding("café".encode(), "utf-8") == ("utf-8", "declared")
    assert choose_encoding("café".encode("cp1252"), "utf-8") == ("cp1252", "guessed")
    assert choose_encoding("naïve".encode(), "ascii") == ("utf-8", "guessed")
    assert choose_encoding(b"caf\x81\xff", "utf-8") == ("utf-8", "damaged")


def test_a_charset_naming_a_bytes_transform_is_not_an_encoding() -> None:
    assert parse_header_charset("text/html; charset=base64") is None
    assert detect_encoding(b"<meta charset=rot13><p>x</p>") == "utf-8"
    assert detect_encoding(b"<p>x</p>", "latin-1") == "iso8859-1"
