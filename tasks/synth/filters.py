"""Quality filters of the synth stage: each returns None (keep) or the reason to drop.

Grounding is measured simply, so it can be explained in one sentence: the share of the
answer's distinct content words (lowercased, stopwords and the source citation removed, a
plural "s" folded) that also occur in the page or chunk the answer was generated from.
A fluent answer about something the page never mentions scores low; a paraphrase that reuses
the page's terms scores high. It does not prove the answer is right. A degenerate loop (under
half of the word trigrams distinct) is dropped as "repetitive" before grounding is measured.
When the page text is given, a grounded answer is still dropped as "literal_not_in_page" if
one of its technical literals (a port, version, flag, path, code span, identifier: see
tasks/synth/literals.py) does not occur in the page: those are the facts a reader copies.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from tasks.synth.literals import find_invented_literals

WORD_RE = re.compile(r"[a-z0-9_]+(?:['.\-][a-z0-9_]+)*")
CITATION_RE = re.compile(r"\(?\s*\bsource:.*$", re.IGNORECASE | re.DOTALL)
PUNCT_RE = re.compile(r"[^\w]+")
_STOPWORD_TEXT = """
    a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing done down during each
    either else etc even ever every few for from further get gets had has have having he her
    here hers him his how however i if in into is it its itself just let like made make makes
    many may me might more most much must my need needs no nor not now of off often on once
    one only or other our ours out over own per please rather same say says see she should
    since so some such than that the their theirs them then there these they this those
    through thus to too under until up upon us use used uses using very via was we well were
    what when where whether which while who whom whose why will with within without would yes
    yet you your yours"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
REFUSAL_RE = re.compile(
    r"\b(?:i(?:'m| am) (?:sorry|unable|not able)|i (?:cannot|can't|can not|won't) "
    r"(?:help|answer|provide|assist|comply)|as an ai\b|as a language model|"
    r"i (?:don't|do not) have (?:access|enough information|information))",
    re.IGNORECASE,
)
PLACEHOLDERS = frozenset(
    {"question", "answer", "main point", "accurate answer", "wrong answer"}
    | {"corrective answer", "sycophantic answer"}
)
PAGE_BOUND_RE = re.compile(
    r"\b(?:according to (?:the|this) (?:text|document|passage|page|article|excerpt|section)|"
    r"(?:in|from|of) (?:the|this) (?:text|document|passage|article|excerpt)\b|"
    r"(?:in|on) this (?:page|section)|"
    r"the (?:given|provided|above|following) (?:text|document|passage|excerpt|page)|"
    r"the passage|the author|(?:mentioned|described|discussed) above)",
    re.IGNORECASE,
)


def strip_citation(answer: str) -> str:
    return CITATION_RE.sub("", answer).strip()


def fold_word(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def extract_content_words(text: str) -> set[str]:
    words = WORD_RE.findall(text.lower())
    return {fold_word(w) for w in words if w not in STOPWORDS}


def score_grounding(answer: str, source_words: set[str]) -> float:
    """Share of the answer's content words found in the source; 0 for an answer with none."""
    words = extract_content_words(strip_citation(answer))
    return len(words & source_words) / len(words) if words else 0.0


def normalize_text(text: str) -> str:
    return PUNCT_RE.sub(" ", text.casefold()).strip()


def is_placeholder(text: str) -> bool:
    """The format's own placeholder copied instead of content ("[question]", "answer")."""
    return normalize_text(text) in PLACEHOLDERS


def check_question(question: str) -> str | None:
    if is_placeholder(question):
        return "placeholder"
    if REFUSAL_RE.search(question):
        return "refusal"
    if PAGE_BOUND_RE.search(question):
        return "page_bound_question"
    return None


def is_repetitive(text: str, min_words: int = 12, min_distinct: float = 0.5) -> bool:
    """A degenerate loop ("2021-01-01 22:22:50 2021-01-01 22:22:50 …"): under half of the
    text's word trigrams are distinct."""
    words = WORD_RE.findall(text.lower())
    if len(words) < min_words:
        return False
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return len(set(trigrams)) / len(trigrams) < min_distinct


def check_answer(
    answer: str, source_words: set[str], min_grounding: float, page: str | None = None
) -> str | None:
    """`page`: the text the answer was generated from, whose literals it may use; None = the
    literals are not checked."""
    text = strip_citation(answer)
    if not text:
        return "empty"
    if is_placeholder(text):
        return "placeholder"
    if is_repetitive(text):
        return "repetitive"
    if REFUSAL_RE.search(answer):
        return "refusal"
    if score_grounding(answer, source_words) < min_grounding:
        return "ungrounded"
    if page is not None and find_invented_literals(text, page):
        return "literal_not_in_page"
    return None


def check_qa(
    question: str,
    answer: str,
    source_words: set[str],
    min_grounding: float,
    page: str | None = None,
) -> str | None:
    """None to keep the pair, else the reason to drop it (duplicates are checked corpus-wide)."""
    return check_question(question) or check_answer(answer, source_words, min_grounding, page)


def check_triple(
    prompt: str,
    chosen: str,
    rejected: str,
    source_words: set[str],
    min_grounding: float,
    page: str | None = None,
) -> str | None:
    """Only the chosen answer must be grounded: the rejected one is wrong on purpose."""
    if normalize_text(chosen) == normalize_text(rejected):
        return "chosen_equals_rejected"
    return check_question(prompt) or check_answer(chosen, source_words, min_grounding, page)


def describe_drop(reason: str, text: str, answer: str, page: str | None) -> str:
    """An exclusion's detail: the dropped text, after the literals the page lacks when they
    were the reason."""
    if reason != "literal_not_in_page" or page is None:
        return text
    invented = find_invented_literals(strip_citation(answer), page)
    return f"not in page: {', '.join(invented)} | {text}"


def split_shingles(text: str, n: int = 2) -> frozenset[tuple[str, ...]]:
    words = WORD_RE.findall(text.lower())
    if len(words) < n:
        return frozenset({tuple(words)})
    return frozenset(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset[tuple[str, ...]], b: frozenset[tuple[str, ...]]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass
class NearDuplicates:
    """Questions seen so far, indexed by word bigram so a new one is compared only with those
    sharing a bigram (not with all of them)."""

    threshold: float
    seen: list[frozenset[tuple[str, ...]]] = field(default_factory=list)
    by_shingle: dict[tuple[str, ...], list[int]] = field(default_factory=lambda: defaultdict(list))

    def add(self, text: str) -> bool:
        """True when `text` nearly duplicates an earlier one (then it is not added)."""
        shingles = split_shingles(text)
        candidates = {i for s in shingles for i in self.by_shingle.get(s, ())}
        if any(jaccard(shingles, self.seen[i]) >= self.threshold for i in candidates):
            return True
        for s in shingles:
            self.by_shingle[s].append(len(self.seen))
        self.seen.append(shingles)
        return False
