#!/usr/bin/env python3
"""Local deploy figures: commit-to-answer time and failed requests during a redeploy.

Measured side by side in one run: how long a one-line commit takes to answer through the
gateway, and how many requests fail while it is rolled out.

Works in a scratch clone of the current commit, with a deploy environment of its own (written
into the clone's platform/deploy.yaml: compute local, its own state directory and gateway port)
and its own pantsd, both stopped at the end. Every model is deployed once first. Then, for each
repeat, a one-line commit to one model's code (iris), deployed with:

  changed only   ./pants --changed-since=HEAD~1 --changed-dependents=transitive deploy
  all models     ./pants deploy models/::   (every model: each image carries the commit as a
                 label, so a commit gives every model a new digest)
  shared code    after a one-line commit to platform/ml_runtime (every model changes):
                 ./pants deploy models/::   (every model rebuilt and redeployed)

Each case is timed from the commit to the first response of the new version through the gateway
(the deploy command itself returns a little later, once the old backend has drained). Client
threads send iris predictions through the gateway throughout; every non-200 answer or error is
a failed request (target: none).

Usage: ./pants run bench/deploy_local.py -- [--repeats N] [--clients N] [--engine process|docker|auto]
                                                  [--include-uncommitted]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from ml_deploy import local
from ml_deploy.config import Environment
from testutil.load import Load, steady_load
from testutil.net import free_port
from testutil.scratch import clone as scratch_clone, commit_change, git, repo_root, stop_pantsd

REPO = repo_root()
ENV_NAME = "bench"
FLOWER = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
PANTS = ["bash", "pants", "--no-dynamic-ui"]
CHANGED = ["--changed-since=HEAD~1", "--changed-dependents=transitive"]


def make_clone(scratch: Path, include_uncommitted: bool) -> Path:
    clone = scratch_clone(scratch / "repo")
    if include_uncommitted:
        # The working tree as it is (modified and new files), as one commit of the clone.
        status = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=all"], cwd=REPO,
                                check=True, capture_output=True, text=True).stdout
        for entry in filter(None, status.split("\0")):
            path = entry[3:]
            source = REPO / path
            if source.is_file():
                (clone / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, clone / path)
            elif not source.exists():
                (clone / path).unlink(missing_ok=True)
        git(clone, "add", "-A")
        git(clone, "commit", "-q", "--allow-empty", "-m", "bench: the working tree")
    return clone


def add_environment(clone: Path, state: Path, port: int, engine: str) -> None:
    with (clone / "platform" / "deploy.yaml").open("a") as f:
        f.write(f"\n# bench/deploy_local.py\n{ENV_NAME}:\n  compute: local\n  engine: {engine}\n"
                f"  state_dir: {state}\n  gateway_port: {port}\n")
    git(clone, "commit", "-q", "-am", "bench: a local deploy environment")


def pants(clone: Path, *args: str) -> float:
    started = time.perf_counter()
    result = subprocess.run([*PANTS, *args], cwd=clone, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"`pants {' '.join(args)}` failed:\n{(result.stdout + result.stderr)[-4000:]}")
    return time.perf_counter() - started


def live_digest(state: Path, key: str = "iris-v1") -> Optional[str]:
    try:
        return json.loads((state / "state.json").read_text())["deployments"][key]["digest"]
    except (OSError, ValueError, KeyError):
        return None


@dataclass
class Result:
    to_answer: float  # commit -> the first answer of the new version
    command: float  # the deploy command's duration
    requests: int
    failed: int


def answered_by(load: Load, since: int, digest: Optional[str]) -> List[float]:
    """When the answers after the first `since` came from `digest`."""
    return [t for (_, headers, _), t in zip(load.answers[since:], load.answered_at[since:])
            if headers.get("x-ml-digest") == digest]


def measure(clone: Path, state: Path, load: Load, path: str, label: str, *args: str) -> Result:
    before = live_digest(state)
    answered, failed = len(load.answers), len(load.failures)
    started = time.perf_counter()
    commit_change(clone, path, f"# bench: {label}\n")
    command = pants(clone, *args)
    after = live_digest(state)
    if after == before:
        sys.exit(f"{label}: iris's live digest did not change ({before})")
    deadline = time.perf_counter() + 30
    while not answered_by(load, answered, after):
        if time.perf_counter() > deadline:
            sys.exit(f"{label}: iris {after} never answered through the gateway")
        time.sleep(0.01)
    first = min(answered_by(load, answered, after))
    time.sleep(0.5)  # requests still in flight to the old version finish
    # A non-200 answer is in both lists: count each request once.
    requests = len(load.answers) - answered + len(load.failures) - failed
    return Result(first - started, command, requests, len(load.failures) - failed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each case (median).")
    parser.add_argument("--clients", type=int, default=4, help="Client threads sending requests.")
    parser.add_argument("--engine", default="process", choices=("process", "docker", "auto"),
                        help="How the local environment runs models (docker needs DOCKER_HOST or a socket).")
    parser.add_argument("--include-uncommitted", action="store_true",
                        help="Measure the working tree (modified and new files) rather than HEAD.")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="ml-deploy-bench-"))
    state, port = scratch / "state", free_port()
    clone = make_clone(scratch, args.include_uncommitted)
    add_environment(clone, state, port, args.engine)
    deploy = ["deploy", f"--deploy-env={ENV_NAME}"]
    cases: Dict[str, List[Result]] = {"changed only": [], "all models": [], "shared code": []}
    body = json.dumps({"flowers": [FLOWER]}).encode()
    headers = {"host": f"iris.ml.localhost:{port}", "content-type": "application/json"}
    model = "models/iris/src/model.py"
    try:
        print("first deploy of every model ...", file=sys.stderr)
        first = pants(clone, *deploy, "models/::")
        # Requests a little apart: the CPUs are left to the deploy being measured.
        with steady_load(port, "/v1/predict", body, headers, clients=args.clients, pause=0.002) as load:
            for i in range(args.repeats):
                print(f"round {i + 1} of {args.repeats} ...", file=sys.stderr)
                cases["changed only"].append(measure(clone, state, load, model, f"changed-only {i}",
                                                     *CHANGED, *deploy))
                cases["all models"].append(measure(clone, state, load, model, f"all models {i}",
                                                   *deploy, "models/::"))
                cases["shared code"].append(measure(clone, state, load, "platform/ml_runtime/codec.py",
                                                    f"shared code {i}", *deploy, "models/::"))
        failures = load.failures
    finally:
        local.stop(Environment(name=ENV_NAME, compute="local", state_dir=str(state), gateway_port=port,
                               engine=args.engine), say=lambda line: print(line, file=sys.stderr))
        stop_pantsd(clone)

    baseline = statistics.median(r.to_answer for r in cases["all models"])
    print(f"first deploy of every model (not in the ratios): {first:.2f} s")
    print(f"{'case':<14}{'to answer s':>12}{'command s':>11}{'vs all':>9}{'failed/requests':>18}")
    for name, results in cases.items():
        to_answer = statistics.median(r.to_answer for r in results)
        command = statistics.median(r.command for r in results)
        failed, requests = sum(r.failed for r in results), sum(r.requests for r in results)
        print(f"{name:<14}{to_answer:>12.2f}{command:>11.2f}{to_answer / baseline:>8.0%}{failed:>9}/{requests}")
    for what in failures[:10]:
        print(f"  failed: {what}")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
