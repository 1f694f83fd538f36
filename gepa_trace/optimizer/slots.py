"""A reflection iteration as the scheduler runs it: its plan, how far it has got
(``SlotState``) and what it was planned on (``Guess``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from gepa_trace.optimizer.protocols import Rollout
from gepa_trace.optimizer.rollouts import Submitted
from gepa_trace.optimizer.state import Candidate


class SlotState(enum.Enum):
    """How far a slot's parent minibatch has got, in order."""

    PLANNED = 1  # planned (its minibatches may be running)
    REFLECTING = 2  # the parent's minibatch is in and its reflection calls are started
    RECORDED = 3  # ... and that minibatch is recorded (where a run at any ``workers`` does)


class Guess(enum.Enum):
    """What a slot was planned on."""

    NONE = "planned"  # the current state: the plan GEPA's loop makes
    PARENT = "parent"  # that the candidate being validated is picked as its parent
    REJECTED = "rejected"  # that the children of the window before it are all rejected


@dataclass
class Slot:
    """One reflection iteration of a window: its plan, then what it produced."""

    iteration: int
    components: list[str]
    parent: Candidate
    batch: list[str]
    child: Candidate | None = None
    copy_of: Candidate | None = None  # the superseded child this iteration proposed before
    failure: tuple[str, str] | None = None  # (kind, reason) when the proposal gave no child
    rollouts: list[Rollout] = field(default_factory=list)
    read: list[str] = field(default_factory=list)  # the parent's validation failures reflected on
    parent_sum: float = 0.0
    skip: bool = False  # the parent is perfect on the minibatch: no reflection
    calls: list[tuple] = field(default_factory=list)  # (component, current, prompt, pending)
    parent_batch: Submitted | None = None
    child_batch: Submitted | None = None
    guess: Guess = Guess.NONE
    state: SlotState = SlotState.PLANNED

    @property
    def speculative(self) -> bool:
        """Run on a guess not yet known to hold."""
        return self.guess is not Guess.NONE

    @property
    def started(self) -> bool:
        """The parent's minibatch is in and the reflection started."""
        return self.state is not SlotState.PLANNED

    @property
    def recorded(self) -> bool:
        """The parent's minibatch is recorded."""
        return self.state is SlotState.RECORDED
