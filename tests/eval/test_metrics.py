"""The judge-free metrics: literal checks, bootstrap intervals, choice accuracy, open-book gain."""

from __future__ import annotations

from tasks.eval.inputs import Question
from tasks.eval.literals import extract_literals, invented_share, literal_recall
from tasks.eval.measure import ModelResults
from tasks.eval.scores import gain_share, summarize_choices
from tasks.eval.stats import bootstrap_mean, bootstrap_ratio


def test_literals_are_commands_options_numbers_and_keys() -> None:
    found = extract_literals(
        "Run `pg_dump -Fc mydb` with --no-owner; set max_connections = 100 in postgresql.conf "
        "then CREATE DATABASE. (Source: http://docs.test/a.html)"
    )
    assert {"pg_dump -fc mydb", "--no-owner", "max_connections", "100", "postgresql.conf"} <= found
    assert {"create", "database"} <= found
    assert not any("docs.test" in f for f in found)
    assert extract_literals("Just a plain sentence about nothing.") == set()


def test_literal_recall_and_invented_share() -> None:
    reference = "Set max_connections to 100 in postgresql.conf."
    assert literal_recall("Use max_connections = 100.", reference) == 2 / 3
    assert literal_recall("No idea.", reference) == 0
    assert literal_recall("anything", "a reference without literals") is None
    page = "max_connections (integer) default 100, set in postgresql.conf"
    assert invented_share("max_connections = 100", page) == 0
    assert invented_share("max_connections = 250 via pg_magic", page) == 2 / 3
    assert invented_share("nothing technical here", page) is None


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_n() -> None:
    small = bootstrap_mean([1, 0, 1, 0], 1000, 0)
    large = bootstrap_mean([1, 0] * 200, 1000, 0)
    assert small["value"] == large["value"] == 0.5
    assert small["low"] <= 0.5 <= small["high"] and small["n"] == 4
    assert large["high"] - large["low"] < small["high"] - small["low"]
    assert bootstrap_mean([], 100, 0) == {"value": None, "n": 0, "low": None, "high": None}
    import math

    ppl = bootstrap_ratio(
        [10.0, 20.0], [10, 10], 500, 0, transform=lambda x: __import__("numpy").exp(x)
    )
    assert abs(ppl["value"] - math.exp(1.5)) < 1e-3


def question(id_: str, kind: str, set_: str = "probes") -> Question:
    return Question(id_, set_, kind, "p", "http://x", None, "q?", "right", "wrong")


def test_choice_accuracy_per_kind_and_set() -> None:
    results = ModelResults("m", "h")
    results.choices = {"a": (-1.0, -2.0), "b": (-3.0, -2.0), "c": (-0.5, -4.0), "d": (-1.0, -0.1)}
    qs = [
        question("a", "good"),
        question("b", "good"),
        question("c", "false_premise"),
        question("d", "good", "held_out"),
    ]
    out = summarize_choices(results, qs, ["probes", "held_out"], 200, 0)
    assert out["choice_good.probes"]["value"] == 0.5 and out["choice_good.probes"]["n"] == 2
    assert out["choice_false_premise.probes"]["value"] == 1.0
    assert out["choice_good.held_out"]["value"] == 0.0
    assert out["choice_false_premise.held_out"]["n"] == 0


def test_open_book_gain_share() -> None:
    def m(v: float) -> dict:
        return {"k": {"value": v}}

    assert gain_share(m(0.5), m(0.2), m(0.8), "k") == 0.5
    assert gain_share(m(0.5), m(0.2), m(0.2), "k") is None  # open book gained nothing
    assert gain_share({}, m(0.2), m(0.8), "k") is None
