"""The running sequences that are past their prompt, kept as one group: a step costs O(changes), not O(batch).

Under `guaranteed_no_evict` a sequence that has produced its first token produces exactly one more in
every following step until its drawn end: its blocks are reserved, it is never preempted, and decodes
come first in the running order, one token each, within the token budget (the batch cap is at most the
budget). So each decoder's counters need not be touched every step: they are stored as of step
`since`, and are that plus the steps since (`materialise`). What one step of all decoders weighs is a
sum — D tokens, D outputs, and for attention sum(computed + 1) query-key pairs and cached tokens read —
kept as a running total, and the step at which each decoder ends is known when it joins, so endings are
looked up by step instead of checked per sequence.
"""

from __future__ import annotations

from expert_router.emulate.scheduler import Sequence


class DecodeSet:
    def __init__(self) -> None:
        self.members: dict[int, Sequence] = {}
        """By request id, in the order they joined."""
        self.computed = 0
        """Sum of the members' computed tokens at the start of the current step."""
        self._since: dict[int, int] = {}
        self._ends: dict[int, list[Sequence]] = {}

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, seq: Sequence) -> bool:
        return seq.id in self.members

    def join(self, seq: Sequence, step: int) -> None:
        """`seq`'s counters are true at the start of `step`, from which it decodes one token per step."""
        self.members[seq.id] = seq
        self._since[seq.id] = step
        self.computed += seq.computed
        last = step + seq.stop_after - seq.generated - 1  # the step of its last token
        self._ends.setdefault(last, []).append(seq)

    def materialise(self, seq: Sequence, step: int) -> None:
        """Bring `seq`'s counters to the start of `step`."""
        since = self._since[seq.id]
        if step != since:
            done = step - since
            seq.computed += done
            seq.generated += done
            seq.length += done
            self._since[seq.id] = step

    def ending(self, step: int) -> list[Sequence]:
        """The members whose last token is produced in `step` (they stay members until `leave`)."""
        return self._ends.pop(step, [])

    def advance(self) -> None:
        """Every member decoded one token in the step that just ended."""
        self.computed += len(self.members)

    def leave(self, seq: Sequence, step: int) -> None:
        """`seq` is no longer a member from the start of `step` (finished or aborted); its counters are
        brought to that step first."""
        self.materialise(seq, step)
        self.computed -= seq.computed
        del self.members[seq.id]
        del self._since[seq.id]
        ending = self._ends.get(step + seq.stop_after - seq.generated - 1, [])
        if seq in ending:  # it left before its last token: aborted
            ending.remove(seq)

    def position(self, seq: Sequence, step: int) -> int:
        """The index of the output token `seq` produces in `step`."""
        return seq.generated + step - self._since[seq.id]
