#!/usr/bin/env python3
"""Iteration speed, in a scratch clone of the current commit with this machine's (warm) caches:

  new model   the README's "Adding a model" followed step by step (testutil.new_model: a model
              type no example uses) from an empty folder to the first answer through the local
              gateway: files written, lines written outside the model's folder (target: 1), wall
              time (target: under 3 minutes)
  pants run   iris under `./pants run models/iris:` (live reload): a one-line code edit to the
              first answer of the new code (target: under 10 s), median of --repeats
  deploy      the same edit, then `./pants deploy models/iris:` on the clone's local
              environment: to the first answer of the new code through the gateway

Every process it starts is stopped at the end (the deploy, pants run's server, the clone's pantsd).

Usage: ./pants run bench/iteration.py -- [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable

from ml_deploy import local
from ml_deploy.config import Environment
from testutil import new_model
from testutil.net import free_port
from testutil.scratch import clone as scratch_clone, git, stop_pantsd

ENV_NAME = "bench"
FLOWER = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
ANSWER = "species=self._species[int(row.argmax())],"


def log(line: str) -> None:
    print(f"[iteration] {line}", flush=True)


def species(url: str, host: str | None = None) -> str:
    request = urllib.request.Request(f"{url}/v1/predict", data=json.dumps({"flowers": [FLOWER]}).encode(),
                                     headers={"Content-Type": "application/json", **({"Host": host} if host else {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)[0]["species"]


def until(check: Callable[[], bool], timeout: float = 600) -> float:
    started = time.perf_counter()
    while True:
        try:
            if check():
                return time.perf_counter() - started
        except OSError:
            pass
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"error: not within {timeout:g} s")
        time.sleep(0.05)


def edit(model: Path, upper: bool) -> None:
    text = model.read_text()
    plain, shouted = ANSWER, ANSWER.replace("],", "].upper(),")
    model.write_text(text.replace(plain, shouted) if upper else text.replace(shouted, plain))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="edits timed per loop")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-iteration-") as scratch_dir:
        scratch = Path(scratch_dir)
        clone = scratch_clone(scratch / "repo")
        state, port = scratch / "state", free_port()
        with (clone / "platform" / "deploy.yaml").open("a") as f:
            f.write(f"\n{ENV_NAME}:\n  compute: local\n  engine: process\n  state_dir: {state}\n  gateway_port: {port}\n")
        git(clone, "commit", "-qam", "bench environment")
        environment = Environment(name=ENV_NAME, compute="local", state_dir=str(state), gateway_port=port, engine="process")
        gateway = f"http://127.0.0.1:{port}"
        server = None
        try:
            log("new model: following the README ...")
            started = time.perf_counter()
            walk = new_model.follow_the_guide(clone, ENV_NAME)
            verdict = new_model.ask(port, "win a free prize now")
            new_model_seconds = time.perf_counter() - started
            assert verdict["spam"] is True, verdict

            log("pants run: serving iris with live reload ...")
            run_port = free_port()
            server = subprocess.Popen(["./pants", "--no-dynamic-ui", "run", "models/iris:", "--", "--port", str(run_port)],
                                      cwd=clone, env={**os.environ, "PANTS_CONCURRENT": "true"},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            url = f"http://127.0.0.1:{run_port}"
            until(lambda: species(url) == "setosa")
            model = clone / "models" / "iris" / "src" / "model.py"
            run_seconds = []
            for n in range(args.repeats):
                upper = n % 2 == 0
                edit(model, upper)
                run_seconds.append(until(lambda: species(url) == ("SETOSA" if upper else "setosa"), 120))
            if args.repeats % 2:
                edit(model, False)
                until(lambda: species(url) == "setosa", 120)
            server.send_signal(signal.SIGINT)  # Ctrl-C
            server.wait(60)
            server = None

            log("deploy: the same edit, deployed ...")
            subprocess.run(["./pants", "--no-dynamic-ui", "deploy", f"--deploy-env={ENV_NAME}", "models/iris:"], cwd=clone,
                           check=True, capture_output=True, env={**os.environ, "PANTS_CONCURRENT": "true"})
            deploy_seconds = []
            for n in range(args.repeats):
                upper = n % 2 == 0
                edit(model, upper)
                started = time.perf_counter()
                subprocess.Popen(["./pants", "--no-dynamic-ui", "deploy", f"--deploy-env={ENV_NAME}", "models/iris:"],
                                 cwd=clone, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env={**os.environ, "PANTS_CONCURRENT": "true"}).wait(600)
                until(lambda: species(gateway, "iris.ml.localhost") == ("SETOSA" if upper else "setosa"), 600)
                deploy_seconds.append(time.perf_counter() - started)
        finally:
            if server is not None:
                server.send_signal(signal.SIGINT)
                server.wait(60)
            local.stop(environment, say=lambda _: None)
            stop_pantsd(clone)

    print("\n## Iteration speed (this machine, warm caches, one run)\n")
    print(f"new model type ({new_model.NAME}): {len(walk.files_written)} files "
          f"({', '.join(walk.files_written)}), {len(walk.lines_outside)} line outside its folder "
          f"({'; '.join(walk.lines_outside)}); empty folder to the first answer through the gateway: "
          f"{new_model_seconds:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in walk.seconds.items()) + ")")
    print(f"iris, a code edit to the new answer under ./pants run: median {statistics.median(run_seconds):.2f} s "
          f"({', '.join(f'{s:.2f}' for s in run_seconds)})")
    print(f"iris, a code edit to the new answer through the gateway with ./pants deploy: median "
          f"{statistics.median(deploy_seconds):.1f} s ({', '.join(f'{s:.1f}' for s in deploy_seconds)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
