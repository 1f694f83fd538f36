"""extract_fenced: the answer block of a reply, in the shapes LLMs actually produce."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gepa_trace.lm import extract_fenced


@pytest.mark.parametrize("reply, block", [
    ("Here you go:\n```\nBe brief.\n```\nDone.", "Be brief."),
    ("```text\nBe brief.\nCite sources.\n```", "Be brief.\nCite sources."),
    ("```markdown\n# Task\nAnswer.\n```", "# Task\nAnswer."),
    # Several blocks: the last one is the answer.
    ("Old:\n```\nold prompt\n```\nNew:\n```\nnew prompt\n```", "new prompt"),
    # A reply cut off before its closing fence.
    ("Diagnosis: too vague.\n```\nAnswer with the country only.\nNever", "Answer with the country only.\nNever"),
    # A closed block followed by a truncated one: the truncated one is the later answer.
    ("```\ndraft\n```\nFinal:\n```\nfinal prompt", "final prompt"),
    # A nested block (an output format) stays inside the instruction.
    ("New instruction:\n```\nReply as JSON:\n```json\n{\"answer\": \"...\"}\n```\nNothing else.\n```\n",
     "Reply as JSON:\n```json\n{\"answer\": \"...\"}\n```\nNothing else."),
    # A longer outer fence holds bare inner fences (CommonMark).
    ("````\nUse:\n```\nexample\n```\n````", "Use:\n```\nexample\n```"),
    # A blank last block is not an answer; the earlier one is.
    ("```\nreal one\n```\n```\n\n```", "real one"),
    # Fences on the same line as prose.
    ("The prompt is ```Answer in one word.``` as requested.", "Answer in one word."),
    ("Prompt: ```text\nAnswer briefly.```", "Answer briefly."),
    ("Windows endings:\r\n```\r\nline one\r\nline two\r\n```\r\n", "line one\nline two"),
    ("  ```\n  indented fence\n  ```", "indented fence"),
])
def test_extract_fenced_finds_the_answer_block(reply, block):
    assert extract_fenced(reply) == block


@pytest.mark.parametrize("reply", [
    None, "", "No block at all.", "```\n```", "```\n   \n```", "just a closing fence\n```",
    "inline `code` is not a block",
])
def test_extract_fenced_returns_none_without_a_usable_block(reply):
    assert extract_fenced(reply) is None


@given(st.text(alphabet=st.characters(blacklist_characters="`\r", blacklist_categories=("Cs",)),
               min_size=1).filter(lambda s: s.strip()),
       st.sampled_from(["", "text", "json", "markdown"]),
       st.text(alphabet="abc .\n", max_size=20), st.booleans())
def test_extract_fenced_round_trips_any_single_block(body, lang, prose, closed):
    reply = f"{prose}\n```{lang}\n{body}\n" + ("```\nafter" if closed else "")
    assert extract_fenced(reply) == body.strip("\n").strip()
