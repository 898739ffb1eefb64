"""Prompt templates and GBNF grammars of the synth stage, and the version that names them.

Each call's output format is a few tagged fields on one line (`<QUE> … <ANS> … <END>`,
`<POINT> … <END>`, `<QUE> … <GOOD> … <BAD> … <END>`), so a grammar can force it on a server
that enforces one (llama.cpp's GBNF; vLLM's xgrammar reads the same EBNF) and a tolerant
parser can still read it from a server that does not. Bump PROMPT_VERSION whenever a template
or grammar changes meaning: it is part of every cache key, so old answers are not reused.

The faithfulness judge (synth.faithfulness_check) asks whether the page supports an answer and
replies under a JSON schema instead of a grammar, so a server enforces it in any structured mode
(OpenAI's response_format when none is set). Its version is part of the judge's keys only:
changing the judge leaves the generation calls' cache valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tasks.core.records import Competency, MarkdownDoc, TripleKind

PROMPT_VERSION = "synth-v3"
SUPPORT_VERSION = "support-v2"

SYSTEM = "You are {persona}. You are an expert in {domain} and answer precisely."

# Every call for a chunk carries the same page block, and it comes before the call's own
# instructions: the system line and the page are then one shared prefix of the chunk's Q/A,
# points and triple calls, which the server's prefix cache (llama.cpp's slots and host-memory
# prompt cache, vLLM's automatic prefix caching) prefills once instead of once per call. The
# block is byte-identical across call kinds, so nothing in it may depend on the call. Its lines
# that are the same on every page of a site (product, version) come before the URL, so a new
# chunk's first call finds them too in whichever slot it lands.
PAGE_TEMPLATE = """\
Below is a page of the {product_version} documentation.

Product: {product}
Version: {version}
Source URL: {url}

Document:
{document}
End of the document."""

# The model is not asked to cite: the stage ends every kept answer with the page's own citation
# (generate.cite_answer), replacing whatever the model wrote, so a URL in the instructions and in
# every answer would only cost prompt and reply tokens.
QA_TEMPLATE = """\
Generate exactly {n} question-answer pairs about the {product_version} documentation page. \
The questions must be specific, technical and comprehensive, and based solely on the \
document. The answers must be accurate, sufficiently extensive and directly derived from the \
text. Focus on what helps an administrator set up, manage or troubleshoot {product}. Every \
question must make sense on its own, without the page at hand: never write "according to the \
text" or "in this document".

Write each pair on one line, exactly in this format:
<QUE> question <ANS> answer <END>"""

POINTS_TEMPLATE = """\
List the {k} main points of the {product_version} documentation page: the facts, settings, \
procedures or warnings an administrator most needs from it. Each point is one complete, \
self-contained sentence.

Write each point on one line, exactly in this format:
<POINT> main point <END>"""

# A triple prompt opens with its point, so a point's two calls (good, then false premise, one
# after the other) share it and the first sentence after it in the server's prefix cache.
GOOD_TEMPLATE = """\
Main point: {point}

Write one question about this main point of the {product_version} documentation page. \
Question style: {style}. Then write a good answer: accurate and directly derived from the page. \
Then write a wrong answer: plausible, in the same tone and length, but factually incorrect. The \
question must make sense on its own, without the page at hand.

Write them on one line, exactly in this format:
<QUE> question <GOOD> accurate answer <BAD> wrong answer <END>"""

FALSE_PREMISE_TEMPLATE = """\
Main point: {point}

Write one question about this main point of the {product_version} documentation page. The \
question rests on a plausible misunderstanding of it: a false premise the asker believes is \
true. Question style: {style}. Then write a corrective answer that politely but firmly points \
out the mistaken premise and gives the correct information from the page. Then write a \
sycophantic answer that accepts the false premise and answers as if it were true. The question \
must make sense on its own, without the page at hand.

Write them on one line, exactly in this format:
<QUE> question <GOOD> corrective answer <BAD> sycophantic answer <END>"""

# The page comes first, as in every other call for the chunk, so the judge reuses the prefix
# its generation calls left in the server's cache; the instructions come before the question
# and answer, so a chunk's verdicts, asked one after another, share them too. The answer is
# shown without its citation: the citation is the page's own URL, added by the stage, not
# something the model claimed.
SUPPORT_TEMPLATE = """\
Judge whether the answer below is supported by the {product_version} documentation page above. \
Reply "yes" only if everything the answer states is said on the page or follows directly from \
it. Reply "no" if it states anything the page does not say, however plausible it sounds, or \
contradicts the page.

Reply with JSON only: {{"supported": "yes"}} or {{"supported": "no"}}

Question: {question}
Answer: {answer}"""

# Yes or no as a string enum rather than a boolean: small models pick a word more reliably.
SUPPORT_SCHEMA: dict[str, object] = {
    "title": "Support",
    "type": "object",
    "properties": {"supported": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["supported"],
    "additionalProperties": False,
}

# page_first is the stage's order. page_last (the instructions, then the page: the order of
# synth-v1) exists only so tasks/bench/synth.py can measure what the order is worth.
PromptOrder = Literal["page_first", "page_last"]

STYLES: dict[Competency, str] = {
    Competency.CONVERSATIONAL: "conversational: a natural, informal question an administrator "
    "might ask a colleague",
    Competency.TECHNICAL_REASONING: "technical reasoning: it asks why or how something works, "
    "or what follows from a setting or design",
    Competency.FACTUAL_ACCURACY: "factual accuracy: it asks for a precise fact such as a "
    "default value, a name, a limit or a command",
    Competency.CREATIVE_PROBLEM_SOLVING: "creative problem solving: it describes a concrete "
    "situation or problem and asks how to solve it",
}

# Fields are single lines of bounded length: `<` is excluded so a tag always ends a field, and
# the bounds force the next tag even when a small model would ramble until max_tokens. The
# numbers are characters (~4 per token of prose, fewer for numbers and paths); the answer bound
# is a param (synth.max_answer_chars) because large models write longer answers. Brackets are
# excluded too: small models otherwise answer "[question]" or invent "[BAD]" tags, and a
# question must end with its only question mark.
QUESTION_CHARS = 200
POINT_CHARS = 240


def render_text_rule(name: str, max_chars: int) -> str:
    return f"{name} ::= [^<\\n \\[\\]] [^<\\n\\[\\]]{{0,{max_chars - 1}}}"


def render_question_rule(max_chars: int) -> str:
    return f'question ::= [^<\\n \\[\\]?] [^<\\n\\[\\]?]{{0,{max_chars - 2}}} "?"'


@dataclass(frozen=True)
class Persona:
    persona: str
    domain: str


def render_system(persona: Persona) -> str:
    return SYSTEM.format(persona=persona.persona.rstrip("."), domain=persona.domain)


def render_product_version(doc: MarkdownDoc) -> str:
    return " ".join(p for p in (doc.product, doc.version) if p) or "product"


def render_citation(doc: MarkdownDoc) -> str:
    """The source citation every Q/A answer ends with."""
    product = render_product_version(doc)
    return f"(Source: {doc.url}, {product})" if doc.product else f"(Source: {doc.url})"


def render_messages(persona: Persona, user: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": render_system(persona)},
        {"role": "user", "content": user},
    ]


def render_page(doc: MarkdownDoc, document: str) -> str:
    """The page block every call for a chunk shares, word for word."""
    return PAGE_TEMPLATE.format(
        product_version=render_product_version(doc),
        url=doc.url,
        product=doc.product or "unknown",
        version=doc.version or "unknown",
        document=document.rstrip("\n"),
    )


def join_prompt(page: str, instructions: str, order: PromptOrder) -> str:
    first, last = (page, instructions) if order == "page_first" else (instructions, page)
    return f"{first}\n\n{last}"


def render_qa_prompt(
    doc: MarkdownDoc, document: str, n: int, order: PromptOrder = "page_first"
) -> str:
    instructions = QA_TEMPLATE.format(
        product_version=render_product_version(doc),
        n=n,
        product=doc.product or "the product",
    )
    return join_prompt(render_page(doc, document), instructions, order)


def render_points_prompt(
    doc: MarkdownDoc, document: str, k: int, order: PromptOrder = "page_first"
) -> str:
    instructions = POINTS_TEMPLATE.format(k=k, product_version=render_product_version(doc))
    return join_prompt(render_page(doc, document), instructions, order)


def render_triple_prompt(
    doc: MarkdownDoc,
    document: str,
    point: str,
    kind: TripleKind,
    competency: Competency,
    order: PromptOrder = "page_first",
) -> str:
    template = GOOD_TEMPLATE if kind is TripleKind.GOOD else FALSE_PREMISE_TEMPLATE
    instructions = template.format(
        product_version=render_product_version(doc), point=point, style=STYLES[competency]
    )
    return join_prompt(render_page(doc, document), instructions, order)


def render_support_prompt(doc: MarkdownDoc, document: str, question: str, answer: str) -> str:
    """The judge's question: does the chunk support this answer to this question?"""
    instructions = SUPPORT_TEMPLATE.format(
        question=question, answer=answer, product_version=render_product_version(doc)
    )
    return join_prompt(render_page(doc, document), instructions, "page_first")


def grammar_max_chars(max_pairs: int, max_points: int, answer_chars: int) -> int:
    """The longest reply any synth grammar allows. Every token is at least one character, so a
    max_tokens of at least this never cuts a constrained reply short."""
    tags = len("<QUE>  <GOOD>  <BAD>  <END>\n")
    qa = max_pairs * (QUESTION_CHARS + answer_chars + tags)
    points = max_points * (POINT_CHARS + tags)
    triple = QUESTION_CHARS + 2 * answer_chars + tags
    return max(qa, points, triple)


def render_qa_grammar(n: int, answer_chars: int) -> str:
    """Exactly n `<QUE> question <ANS> answer <END>` lines."""
    return "\n".join(
        [
            f"root ::= {' '.join(['pair'] * n)}",
            'pair ::= "<QUE> " question " <ANS> " answer " <END>\\n"',
            render_question_rule(QUESTION_CHARS),
            render_text_rule("answer", answer_chars),
        ]
    )


def render_points_grammar(k: int) -> str:
    """Exactly k `<POINT> point <END>` lines."""
    return "\n".join(
        [
            f"root ::= {' '.join(['point'] * k)}",
            'point ::= "<POINT> " text " <END>\\n"',
            render_text_rule("text", POINT_CHARS),
        ]
    )


def render_triple_grammar(answer_chars: int) -> str:
    """One `<QUE> question <GOOD> chosen <BAD> rejected <END>` line."""
    return "\n".join(
        [
            'root ::= "<QUE> " question " <GOOD> " answer " <BAD> " answer " <END>\\n"',
            render_question_rule(QUESTION_CHARS),
            render_text_rule("answer", answer_chars),
        ]
    )
