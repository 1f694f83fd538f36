"""The simulated models on agents other than the demo: a generic classify step in
gepa-sim/task, and gepa-sim/reflect's generic reflection (lm/sim/generic.py) that turns
feedback and corrections into rules that step follows.

The domain here is deliberately neither the demo nor the ticket desk: product reviews
sorted into praise, complaint or question. Everything the models do comes from the
prompt.
"""

from __future__ import annotations

import random

from gepa_trace.lm.fenced import extract_fenced
from gepa_trace.lm.sim import generate, generic, task
from gepa_trace.optimizer.protocols import ComponentRecord
from gepa_trace.optimizer.reflection import ReflectionExample, build_prompt

SORT = ("Sort the customer review into one of: praise, complaint, question. "
        "Reply with the category.")


def classify(instruction: str, review: str) -> str:
    messages = [{"role": "system", "content": instruction},
                {"role": "user", "content": f"Review: {review}\nCategory:"}]
    return task.reply(messages, random.Random(0))


def reflection_prompt(instruction: str, cases: list[tuple[str, str, str, float]]) -> str:
    """gepa-trace's own reflection prompt for ``(review, output, feedback, score)`` cases."""
    examples = []
    for i, (review, output, feedback, score) in enumerate(cases):
        rendered = f"[system]\n{instruction}\n\n[user]\nReview: {review}\nCategory:"
        examples.append(ReflectionExample(f"ex{i}", {"review": review},
                                          [ComponentRecord("sorter", rendered, output)],
                                          feedback, score))
    return build_prompt("sorter", instruction, examples, max_tokens=6000)


def propose(prompt: str, seed: int | None = None) -> str:
    """The new instruction of a reply to ``prompt``; without a seed, of the first reply
    (of seeds 0..9) that is not one of the deliberately useless ones."""
    for s in range(10) if seed is None else [seed]:
        reply = generic.reply([{"role": "user", "content": prompt}], random.Random(s))
        new = extract_fenced(reply)
        assert new is not None and reply.startswith("Diagnosis:"), reply
        if seed is not None or not any(r in new for r in generic.USELESS_RULES):
            return new
    raise AssertionError(f"ten useless replies in a row to:\n{prompt}")


def test_an_instruction_naming_options_is_a_classify_step_with_those_options():
    assert task.step_of(SORT, {}) == "classify"
    assert task.options_of(SORT) == ("answer", ["praise", "complaint", "question"])
    routed = "Route the message to one team: billing, shipping, technical, account."
    assert task.options_of(routed) == ("team", ["billing", "shipping", "technical", "account"])
    assert task.step_of("Answer the question using the evidence.", {}) == "answer"


def test_without_rules_the_classifier_is_naive_an_option_it_reads_else_the_first():
    assert classify(SORT, "I have a question about the lid").strip(".").endswith("question")
    replies = [classify(SORT, f"The lid broke after {n} days, so disappointed.")
               for n in range(2, 30)]
    assert {r.rstrip(".").split()[-1] for r in replies} == {"praise"}, "the first option"
    assert any(r.startswith("The answer is") for r in replies), "sometimes a sentence"
    only = SORT + " Answer with only the category name, nothing else."
    assert {classify(only, f"The lid broke after {n} days.") for n in range(2, 30)} == {"praise"}


def test_the_first_keyword_rule_whose_word_the_message_mentions_decides():
    ruled = (SORT + "\nRules:\n- If the message mentions 'broke', answer complaint.\n"
             "- When the message contains 'how do', answer question.\n"
             "- If the message mentions 'refund' or 'return', route it to complaint.\n"
             "- Do not answer praise if the message mentions 'love'.\n"
             "- Answer with only the category name.")
    assert classify(ruled, "It broke and how do I fix it?") == "complaint"
    assert classify(ruled, "How do I clean it?") == "question"
    assert classify(ruled, "I returned it last week") == "complaint", "a word's start matches"
    assert classify(ruled, "I love it") == "praise", "a negated rule is not a rule"
    assert task.keyword_rules(ruled)[2] == (("refund", "return"), "complaint")


def test_a_write_step_replies_naming_the_field_the_instruction_names():
    instruction = "Write a one-line reply to the customer naming the team that handles it."
    messages = [{"role": "system", "content": instruction},
                {"role": "user", "content": "Customer message: hello\nTeam: shipping\nReply:"}]
    assert task.step_of(instruction, {}) == "write"
    assert "shipping team" in task.reply(messages, random.Random(0))


def test_corrections_become_a_keyword_rule_on_the_word_the_same_answers_share():
    cases = [("The hinge broke on day two", "praise", "expected 'complaint', got 'praise'", 0),
             ("Hinge broke again, awful", "praise", "expected 'complaint', got 'praise'", 0),
             ("Lovely colour, the hinge feels solid", "praise", "correct", 1.0)]
    new = propose(reflection_prompt(SORT, cases))
    assert task.keyword_rules(new) == [(("broke",), "complaint")], new
    assert new.startswith(SORT), "the current instruction is kept"
    assert classify(new, "The handle broke off").rstrip(".").endswith("complaint"), \
        "the rule generalises"


def test_a_word_the_feedback_itself_uses_is_preferred():
    said = "expected 'question', got 'praise' (user feedback: descale queries are questions)"
    cases = [("Does the kettle descale itself?", "praise", said, 0)]
    sound = [propose(reflection_prompt(SORT, cases), seed) for seed in range(10)]
    assert {str(task.keyword_rules(new)) for new in sound} \
        <= {"[]", "[(('descale',), 'question')]"}
    assert any(task.keyword_rules(new) for new in sound)


def test_expected_answers_are_read_from_the_correction_phrasings_feedback_uses():
    options = ["praise", "complaint", "question"]
    for text in ["expected 'complaint', got 'praise'", "Correct answer: complaint",
                 "the answer should be complaint", "expected: complaint (a reviewer's)",
                 "users said it should have been complaint"]:
        assert generic.expected_in(text, options) == "complaint", text
    for text in ["wrong", "too long", "users rejected the recorded answer", "not a complaint"]:
        assert generic.expected_in(text, options) is None, text


def test_answers_padded_into_sentences_get_a_format_rule():
    padded = "expected 'praise', got 'The answer is praise.'"
    cases = [("Great blender", "The answer is praise.", padded, 0),
             ("Nice colour", "praise", "too long, only the category please", 0)]
    new = propose(reflection_prompt(SORT, cases))
    assert task.label_only(new) and not task.label_only(SORT), new
    reply = generic.reply([{"role": "user", "content": reflection_prompt(SORT, cases)}],
                        random.Random(0))
    assert "got 'The answer is praise.'" in reply, "the diagnosis quotes the feedback as written"
    assert classify(new, "The lid broke after 5 days, so disappointed.") == "praise"


def test_existing_rules_are_kept_and_new_ones_added_after_them():
    ruled = SORT + "\n\nRules:\n- If the message mentions 'broke', answer complaint."
    cases = [("Can I wash the jug?", "praise", "expected 'question', got 'praise'", 0),
             ("Can it crush ice?", "praise", "expected 'question', got 'praise'", 0)]
    new = propose(reflection_prompt(ruled, cases))
    rules = task.keyword_rules(new)
    assert len(rules) == 2 and rules[0] == (("broke",), "complaint") and rules[1][1] == "question"
    assert new.startswith(ruled), new


def test_generic_reflection_is_deterministic_per_prompt_and_sometimes_useless():
    cases = [("The hinge broke", "praise", "expected 'complaint', got 'praise'", 0)]
    prompt = reflection_prompt(SORT, cases)
    messages = [{"role": "user", "content": prompt}]
    assert generate("gepa-sim/reflect", messages).text == generate("gepa-sim/reflect",
                                                                   messages).text
    useless = sum(not task.keyword_rules(propose(prompt, seed)) for seed in range(200))
    assert 0.05 * 200 <= useless <= 0.3 * 200, useless


def test_feedback_without_an_expected_answer_teaches_no_keyword():
    cases = [("The hinge broke", "praise", "wrong", 0),
             ("Hinge broke again", "praise", "users rejected this exact answer", 0)]
    for seed in range(10):
        assert task.keyword_rules(propose(reflection_prompt(SORT, cases), seed)) == []


def test_gepa_sim_reflect_hands_non_demo_prompts_to_generic_reflection():
    cases = [("The hinge broke", "praise", "expected 'complaint', got 'praise'", 0),
             ("Hinge broke again", "praise", "expected 'complaint', got 'praise'", 0)]
    prompt = reflection_prompt(SORT, cases)
    replies = [generate(f"gepa-sim/reflect?seed={s}", [{"role": "user", "content": prompt}]).text
               for s in range(6)]
    assert any(task.keyword_rules(extract_fenced(r)) for r in replies), replies
