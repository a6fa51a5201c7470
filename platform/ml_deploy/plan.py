"""A deploy is a plan of steps, worked out with read-only calls and then carried out in order.

Drivers describe every step (what resource, created, updated or unchanged) before touching
anything, so `--dry-run` prints exactly what a real run would do, and a failing step can be
reported with what was done before it and what still serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Union

CREATE, UPDATE, REPLACE, DELETE, UNCHANGED = "create", "update", "replace", "delete", "unchanged"
_SIGILS = {CREATE: "+", UPDATE: "~", REPLACE: "±", DELETE: "-", UNCHANGED: "="}


@dataclass(frozen=True)
class Outcome:
    """What a step may return: its note for the log and a value for the steps after it."""

    note: str
    value: Any = None


@dataclass
class Step:
    action: str  # CREATE, UPDATE, REPLACE, DELETE or UNCHANGED
    resource: str  # e.g. "Lambda alias ml-iris-v1:live"
    detail: str = ""
    # Returns an optional note for the log, or an Outcome; later steps read `value`.
    run: Optional[Callable[[], Union[None, str, Outcome]]] = None
    value: Any = None  # the Outcome's value, once the step has run

    def describe(self) -> str:
        text = f"  {_SIGILS[self.action]} {self.action:9} {self.resource}"
        return f"{text}: {self.detail}" if self.detail else text


@dataclass
class Plan:
    target: str  # "iris v1 -> lambda (dev)"
    digest: str
    serving: str  # what serves now, kept if a step fails: "alias live -> version 3 (sha256:...)"
    steps: List[Step] = field(default_factory=list)
    url: str = ""  # where the release answers once deployed
    done: str = ""  # said when every step has run (default: "deployed <digest>: <url>")
    # Where a running step reports progress (execute sets it): waits on AWS take minutes.
    say: Callable[[str], None] = field(default=lambda _: None, repr=False)

    def add(self, action: str, resource: str, detail: str = "",
            run: Optional[Callable[[], Union[None, str, Outcome]]] = None) -> Step:
        step = Step(action, resource, detail, run)
        self.steps.append(step)
        return step

    @property
    def changes(self) -> List[Step]:
        return [s for s in self.steps if s.action != UNCHANGED]


class DeployFailed(Exception):
    def __init__(self, plan: Plan, step: Step, error: BaseException, done: List[Step]) -> None:
        self.plan, self.step, self.error, self.done = plan, step, error, done
        done_text = "; ".join(f"{s.action} {s.resource}" for s in done) or "nothing"
        kept = ("nothing served before this deploy" if plan.serving.startswith("nothing")
                else f"{plan.serving} (the previous version keeps serving)")
        super().__init__(
            f"{plan.target}: {step.action} {step.resource} failed: {type(error).__name__}: {error}\n"
            f"  done before it: {done_text}\n"
            f"  left in place: {kept}; re-run the deploy once the cause is fixed")


def execute(plan: Plan, *, dry_run: bool = False, say: Callable[[str], None] = print) -> bool:
    """Carry out `plan` (or only print it with `dry_run`). True if anything changed."""
    say(f"{plan.target}: {plan.digest}")
    plan.say = lambda text: say(f"      {text}")
    changes = plan.changes
    if not changes:
        say(f"  already live, no change ({plan.serving})")
        if plan.url:
            say(f"  {plan.url}")
        return False
    if dry_run:
        say("  plan (dry run, nothing was changed):")
        for step in plan.steps:
            say(step.describe())
        return False
    done: List[Step] = []
    for step in plan.steps:
        if step.action == UNCHANGED:
            continue
        say(step.describe())
        try:
            note = step.run() if step.run else None
        except Exception as e:
            raise DeployFailed(plan, step, e, done) from e
        if isinstance(note, Outcome):
            note, step.value = note.note, note.value
        if note:
            say(f"      {note}")
        done.append(step)
    say(f"  {plan.done}" if plan.done else f"  deployed {plan.digest}" + (f": {plan.url}" if plan.url else ""))
    return True
