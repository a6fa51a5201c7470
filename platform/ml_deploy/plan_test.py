from __future__ import annotations

import pytest

from ml_deploy.plan import CREATE, UNCHANGED, UPDATE, DeployFailed, Plan, execute


def make_plan(log: list, fail_at: str = "") -> Plan:
    plan = Plan(target="m v1 -> local (dev)", digest="sha256:abc", serving="v1 sha256:old on :9000")

    def step(name: str):
        def run() -> str:
            if name == fail_at:
                raise RuntimeError("boom")
            log.append(name)
            return f"{name} done"
        return run

    plan.add(UNCHANGED, "image", "already there")
    plan.add(CREATE, "backend", "start", step("backend"))
    plan.add(UPDATE, "route", "switch", step("route"))
    return plan


def test_execute_runs_the_changed_steps_in_order_and_reports_them() -> None:
    log, out = [], []
    assert execute(make_plan(log), say=out.append) is True
    assert log == ["backend", "route"]
    assert "  + create    backend: start" in out and "      route done" in out
    assert out[-1] == "  deployed sha256:abc"


def test_dry_run_prints_every_step_and_runs_none() -> None:
    log, out = [], []
    assert execute(make_plan(log), dry_run=True, say=out.append) is False
    assert log == []
    assert "  = unchanged image: already there" in out and "  ~ update    route: switch" in out


def test_a_plan_without_changes_says_so() -> None:
    plan = Plan(target="m v1", digest="sha256:abc", serving="v1 sha256:abc", url="http://m")
    plan.add(UNCHANGED, "image")
    out = []
    assert execute(plan, say=out.append) is False
    assert out[1:] == ["  already live, no change (v1 sha256:abc)", "  http://m"]


def test_a_failed_step_names_itself_what_was_done_and_what_still_serves() -> None:
    log = []
    with pytest.raises(DeployFailed) as failed:
        execute(make_plan(log, fail_at="route"), say=lambda _: None)
    message = str(failed.value)
    assert "update route failed: RuntimeError: boom" in message
    assert "done before it: create backend" in message
    assert "left in place: v1 sha256:old on :9000 (the previous version keeps serving)" in message


def test_a_failed_first_deploy_does_not_claim_a_previous_version() -> None:
    plan = Plan(target="m v1", digest="sha256:abc", serving="nothing (new function)")
    plan.add(CREATE, "function", run=lambda: 1 / 0)
    with pytest.raises(DeployFailed, match="left in place: nothing served before this deploy; re-run"):
        execute(plan, say=lambda _: None)
