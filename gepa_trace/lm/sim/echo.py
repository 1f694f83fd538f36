"""``gepa-sim/echo``: a trivial simulated model for tests of the plumbing.

It answers with the last user message in a fenced block, preceded by a line that depends
on the rng, so a test can see both the content and that the seeding is deterministic::

    echo (token 4821):
    ```
    <last user message>
    ```

A last user message that contains ``NO FENCE`` is echoed without a fenced block, so the
corrective retry of ``LM.complete_fenced`` can be exercised.
"""

from __future__ import annotations

import random


def reply(messages: list[dict[str, str]], rng: random.Random) -> str:
    last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    token = rng.randrange(10_000)
    if "NO FENCE" in last:
        return f"echo (token {token}): {last}"
    return f"echo (token {token}):\n```\n{last}\n```"
