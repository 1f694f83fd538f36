"""``gepa-sim/echo``: a trivial simulated model for tests of the plumbing.

It answers with the last user message in a fenced block, preceded by a line that depends
on the rng, so a test can see both the content and that the seeding is deterministic::

    echo (token 4821):
    ```
    <last user message>
    ```

No fenced block when the last user message contains ``NO FENCE`` (so a corrective
follow-up gets a block) or any user message contains ``NEVER FENCE`` (so it never does).
"""

from __future__ import annotations

import random


def reply(messages: list[dict[str, str]], rng: random.Random) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    last = users[-1] if users else ""
    token = rng.randrange(10_000)
    if "NO FENCE" in last or any("NEVER FENCE" in text for text in users):
        # Quoted fences would make a block of their own: this branch must have none.
        return f"echo (token {token}): " + last.replace("```", "`")
    return f"echo (token {token}):\n```\n{last}\n```"
