"""Literal grounding: which parts of an answer are technical literals, and an answer whose
literal its page does not hold (a wrong port, version, flag, path) is dropped."""

from __future__ import annotations

import pytest

from tasks.synth.filters import check_qa, check_triple, describe_drop, extract_content_words
from tasks.synth.literals import find_invented_literals, find_literals

PAGE = """---
url: http://docs.test/app-pgdump.html
title: pg_dump
product: PostgreSQL
version: '15'
---

# pg_dump

pg_dump connects to port 5432 unless `-p port` or the PGPORT variable says otherwise.
Use `pg_dump -Fc mydb > db.dump` for the custom format, then restore it with
pg_restore --no-owner. Client authentication is configured in
/etc/postgresql/15/main/pg_hba.conf, and shared_buffers defaults to 128MB.
Release 15.4 fixed a crash in pg_backup_start(); up to 10,000 rows are read at once.
Functions such as pg_catalog.pg_size_pretty and the pgAdmin tool read UTF8 text.
"""
WORDS = extract_content_words(PAGE)


@pytest.mark.parametrize(
    ("text", "literals"),
    [
        ("Connect to port 5432.", ["5432"]),
        ("PostgreSQL 15.4 and 127.0.0.1 at 10:30.", ["PostgreSQL", "15.4", "127.0.0.1", "10:30"]),
        ("Run pg_restore --no-owner -Fc -h host.", ["pg_restore", "--no-owner", "-Fc", "-h"]),
        ("Edit /etc/postgresql/pg_hba.conf.", ["/etc/postgresql/pg_hba.conf"]),
        (r"Or ~/.pgpass, ./configure and C:\pgdata.", ["~/.pgpass", "./configure", r"C:\pgdata"]),
        ("Run `pg_ctl  restart -m fast`.", ["pg_ctl restart -m fast"]),
        ('Set "shared_buffers" in postgresql.conf.', ["shared_buffers", "postgresql.conf"]),
        ("Call pg_backup_start() on pgAdmin.", ["pg_backup_start()", "pgAdmin"]),
        ("Read pg_catalog.pg_class as UTF8 on x86_64.", ["pg_catalog.pg_class", "UTF8", "x86_64"]),
        ("At 2021-01-01 22:22:50 wrote 0x1F3A.", ["2021-01-01 22:22:50", "0x1F3A"]),
        ("See https://example.org/a.html now.", ["https://example.org/a.html"]),
        ("Keep 10,000 rows and 128MB (50%).", ["10000", "128", "50"]),
    ],
)
def test_find_literals(text: str, literals: list[str]) -> None:
    assert find_literals(text) == literals


@pytest.mark.parametrize(
    "prose",
    [
        "In step 1, take 2 copies, e.g. on the 2nd day; i.e. a backup, etc.",
        "SQL and WAL are acronyms, and/or TCP/IP is prose, as is a well-known _emphasis_.",
        "The dump is restored with the client program after the server starts.",
    ],
)
def test_prose_has_no_literals(prose: str) -> None:
    assert find_literals(prose) == []


def test_each_literal_is_listed_once_in_order() -> None:
    text = "Use -p 5432, then -p 5432 again with pg_dump."
    assert find_literals(text) == ["-p", "5432", "pg_dump"]


@pytest.mark.parametrize(
    "answer",
    [
        "pg_dump uses port 5432 by default.",
        "Release 15.4 fixed it.",
        "Pass -p or --no-owner to pg_restore.",
        "Authentication lives in /etc/postgresql/15/main/pg_hba.conf.",
        "Run `pg_dump -Fc mydb > db.dump` to get the custom format.",
        "Run `pg_dump   -Fc mydb > db.dump`, spaced differently.",
        "Set 'shared_buffers' to 128 MB.",
        "At most 10000 rows, or 10,000, are read; call pg_backup_start() first.",
        "Sizes come from pg_catalog.pg_size_pretty in pgAdmin, as UTF8.",
        "PostgreSQL 15 ships pg_dump.",
    ],
)
def test_literals_the_page_holds_pass(answer: str) -> None:
    assert find_invented_literals(answer, PAGE) == []


@pytest.mark.parametrize(
    ("answer", "invented"),
    [
        ("pg_dump uses port 5433 by default.", ["5433"]),
        ("pg_dump uses port 543 by default.", ["543"]),
        ("Release 15.5 fixed it.", ["15.5"]),
        ("Release 15.41 fixed it.", ["15.41"]),
        ("Pass -P or --no-owners to pg_restore.", ["-P", "--no-owners"]),
        ("Pass --owner to pg_restore.", ["--owner"]),
        ("Authentication lives in /etc/pg_hba.conf.", ["/etc/pg_hba.conf"]),
        ("Run `pg_dump -Fd mydb`.", ["pg_dump -Fd mydb"]),
        ("Set Shared_Buffers to 256MB.", ["Shared_Buffers", "256"]),
        ("The dump has checksum a3f9c2e1d4b7.", ["a3f9c2e1d4b7"]),
        ("It was dumped at 2021-01-01 22:22:50.", ["2021-01-01 22:22:50"]),
        ("Call pg_backup_stop() afterwards.", ["pg_backup_stop()"]),
    ],
)
def test_literals_the_page_lacks_are_found(answer: str, invented: list[str]) -> None:
    assert find_invented_literals(answer, PAGE) == invented


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("pg_dump connects to port 5432 unless -p says otherwise.", None),
        ("pg_dump connects to port 5433 unless -p says otherwise.", "literal_not_in_page"),
        ("pg_dump connects to its default port unless told otherwise.", None),
        ("pg_dump connects to port 5432 unless --port says otherwise.", "literal_not_in_page"),
        # the citation is not part of the answer's claims
        ("pg_dump connects to port 5432. (Source: http://x.test/9999, PostgreSQL 15.4)", None),
    ],
)
def test_qa_with_a_literal_not_in_its_page_is_dropped(answer: str, reason: str | None) -> None:
    question = "Which port does pg_dump connect to?"
    assert check_qa(question, answer, WORDS, 0.5, PAGE) == reason


def test_literals_are_not_checked_without_the_page() -> None:
    answer = "pg_dump connects to port 5433 unless -p says otherwise."
    assert check_qa("Which port does pg_dump use?", answer, WORDS, 0.5) is None


def test_only_the_chosen_answer_of_a_triple_is_checked_for_literals() -> None:
    right, wrong = "pg_dump connects to port 5432.", "pg_dump connects to port 5433."
    prompt = "Does pg_dump connect to port 5433?"
    assert check_triple(prompt, right, wrong, WORDS, 0.5, PAGE) is None
    assert check_triple(prompt, wrong, right, WORDS, 0.5, PAGE) == "literal_not_in_page"


def test_the_exclusion_detail_names_the_invented_literals() -> None:
    answer = "pg_dump reads port 5433 and --portal. (Source: http://x.test/9999)"
    detail = describe_drop("literal_not_in_page", f"Q? | {answer}", answer, PAGE)
    assert detail.startswith("not in page: 5433, --portal | Q? | ")
    assert describe_drop("ungrounded", "Q? | A", "A", PAGE) == "Q? | A"


def test_an_unbalanced_backtick_does_not_make_a_sentence_one_code_span() -> None:
    page = "Use `CREATE TABLESPACE` to add one; the default holds the system catalogs."
    answer = (
        "Run `CREATE TABLESPACE` first. ` This allows full system catalog management without "
        "the need to create temporary tables, which the default also holds.`"
    )
    assert find_invented_literals(answer, page) == []
    assert find_literals("see `pg_dump -Fc`") == ["pg_dump -Fc"]
