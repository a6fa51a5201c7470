#!/usr/bin/env python3
"""Serving figures for the iris model: our server vs BentoML vs MLServer, side by side in one run.

All three serve the same iris artifacts/classifier.joblib on 127.0.0.1 with two model
workers each, and the same load generator (wrk, Lua script for the POST body) measures them at
concurrency 1 (-t1 -c1) and 32 (-t2 -c32). Rounds are interleaved (every server at one
concurrency, then the next), so a slow spell of this noisy machine hits all three alike; the
table shows medians over rounds and the ratios are medians of per-round ratios.

  ours       dist/models.iris/iris/model.pex (from `./pants package models/iris:`), --workers 2
  BentoML    a @bentoml.service class written to a temp dir, workers=2
  MLServer   mlserver-sklearn's SKLearnModel, parallel_workers=2, V2 infer with an FP32 [1,4] tensor

Also: the floor (Model.predict on one flower, in process, no server), each server's time from
process start to its first correct answer, and the memory of each server's whole process tree
after the load.

The BentoML and MLServer venvs are built once under ~/.cache/ml-platform/bench/ (pinned below)
and reused while their pins are unchanged. wrk comes from Debian (installed with apt-get if
missing and we are root).

With `--baseline REF`, the iris model as built at git ref REF (in a scratch clone) is served
too, under the same load: the ratio of ours to it is what a change to the server costs.

Usage: ./pants run bench/serving.py -- [--rounds N] [--duration S] [--warmup S] [--no-build] [--baseline REF] [--no-peers]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from testutil import scratch
from testutil.net import free_port

REPO = scratch.repo_root()
IRIS = REPO / "models" / "iris"
DIST = REPO / "dist" / "models.iris" / "iris"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ml-platform" / "bench"

# Checked to install together with models/iris/requirements.txt (scikit-learn 1.3.2, numpy 1.26.4)
# on CPython 3.11. uvloop is pinned below 0.22 because MLServer 1.7.1's parallel workers call
# asyncio.get_event_loop() before any loop exists, which uvloop >= 0.22 turns into a
# RuntimeError: every worker dies at start (SeldonIO/MLServer#2286).
BENTOML_PINS = ["bentoml==1.4.40"]
MLSERVER_PINS = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.0"]

WORKERS = 2
FLOWER = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
EXPECTED = "setosa"
JSON_BODY = json.dumps({"flowers": [FLOWER]}, separators=(",", ":"))
V2_BODY = json.dumps(
    {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": list(FLOWER.values())}]},
    separators=(",", ":"),
)

BENTO_SERVICE = '''\
import os

import bentoml
import joblib
import numpy as np
from pydantic import BaseModel


class Flower(BaseModel):
    sepal_length: float
    sepal_width: float
    petal_length: float
    petal_width: float


@bentoml.service(workers=int(os.environ["BENCH_WORKERS"]))
class Iris:
    def __init__(self) -> None:
        self.clf = joblib.load(os.environ["BENCH_JOBLIB"])
        self.species = [str(name) for name in self.clf.classes_]

    @bentoml.api
    def predict(self, flowers: list[Flower]) -> list[dict]:
        # The same work as models/iris/model.py: one batched predict_proba, label + probabilities.
        x = np.array(
            [[f.sepal_length, f.sepal_width, f.petal_length, f.petal_width] for f in flowers],
            dtype=np.float64,
        )
        probs = self.clf.predict_proba(x)
        return [
            {"species": self.species[int(row.argmax())],
             "probabilities": {name: float(p) for name, p in zip(self.species, row)}}
            for row in probs
        ]
'''

# Runs inside the model's own PEX environment (PEX_INTERPRETER=1), so the floor uses exactly
# the interpreter and wheels our workers use. Besides Model.predict it times the worker's whole
# handling of one framed request (JSON decode, typed decoding, predict, JSON encode), which
# splits our overhead into worker-side and server-side parts.
FLOOR_CODE = '''\
import json, statistics, sys, time
import model
from ml_runtime import worker
from ml_runtime.handler import LoadedModel

N = int(sys.argv[1])
loaded = LoadedModel("model:Model")
flowers = [model.Flower(**json.loads(sys.argv[2]))]
body = json.dumps({"flowers": [json.loads(sys.argv[2])]}).encode()
assert loaded.instance.predict(flowers)[0].species == sys.argv[3]

def median_seconds(fn):
    for _ in range(N // 10):
        fn()
    times = []
    for _ in range(N):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)

print(json.dumps({
    "predict": median_seconds(lambda: loaded.instance.predict(flowers)),
    "worker_handle": median_seconds(lambda: worker.handle(loaded, {"id": "x", "endpoint": "predict"}, body)),
}))
'''


# ---------------------------------------------------------------------------------------------
# Environments and tools


def find_python311() -> str:
    candidates = [sys.executable, shutil.which("python3.11") or ""]
    candidates += sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.11*/bin/python")), reverse=True)
    candidates += ["/usr/bin/python3.11", "/usr/local/bin/python3.11"]
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
                             capture_output=True, text=True)
        if out.stdout.strip() == "True":
            return candidate
    sys.exit("error: no CPython 3.11 found (tried sys.executable, python3.11 on PATH, pyenv)")


def iris_file(relative: str) -> Path:
    """A file of the iris model, wherever under models/iris/ the model's sources live."""
    for candidate in (IRIS / relative, IRIS / "src" / relative):
        if candidate.is_file():
            return candidate
    found = sorted(IRIS.rglob(relative))
    if not found:
        sys.exit(f"error: no {relative} under {IRIS}")
    return found[0]


def iris_requirements() -> list[str]:
    lines = iris_file("requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def ensure_venv(name: str, packages: list[str], python: str) -> Path:
    """A venv with exactly `packages`, rebuilt only when the pins (or the interpreter) change."""
    venv = CACHE / name
    stamp = venv / "bench-pins.json"
    wanted = {"python": os.path.realpath(python), "packages": sorted(packages)}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return venv
    log(f"building venv {venv} ({' '.join(packages)}) ...")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    # One resolve of everything at once, so pip fails loudly on a conflict with the iris pins.
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                             *packages], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: pip install into {venv} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    stamp.write_text(json.dumps(wanted))
    return venv


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        sys.exit("error: wrk is missing; install it: sudo apt-get install -y wrk")
    log("installing wrk with apt-get ...")
    subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("wrk") or sys.exit("error: wrk is still missing after apt-get install")


def build_ours(skip: bool) -> str:
    """Packages the iris model; returns a note for the report ('' when the build is fresh)."""
    main = DIST / "model.pex" / "__main__.py"
    if not skip:
        log("./pants package models/iris: ...")
        result = subprocess.run(["./pants", "--no-dynamic-ui", "package", "models/iris:"], cwd=REPO,
                                env={**os.environ, "PANTS_CONCURRENT": "true"}, capture_output=True, text=True)
        if result.returncode == 0:
            return ""
        # A half-edited work tree elsewhere in the repo can break the build; the packaged model
        # from the last good build is still worth measuring, as long as the report says so.
        if not main.exists():
            sys.exit(f"error: `./pants package models/iris:` failed:\n{result.stderr[-3000:]}")
        error = [line for line in result.stderr.splitlines() if "Error" in line][-1:] or ["(see pants)"]
        log(f"warning: `./pants package models/iris:` failed ({error[0].strip()}); using the existing build")
    elif not main.exists():
        sys.exit(f"error: {main} is missing; run ./pants package models/iris: (or drop --no-build)")
    built = time.strftime("%Y-%m-%d %H:%M", time.localtime(main.stat().st_mtime))
    return f"our model.pex is the existing build from {built} (the Pants build {'was skipped' if skip else 'failed'})"


def python_version(python: str) -> str:
    return subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True).stdout.strip()


def pip_version(venv: Path, package: str) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          f"import importlib.metadata as m; print(m.version({package!r}))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "?"


# ---------------------------------------------------------------------------------------------
# Servers


def post(url: str, body: str, timeout: float = 5.0) -> object:
    request = urllib.request.Request(url, data=body.encode(), method="POST",
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def ours_label(answer: object) -> str:
    return answer[0]["species"]  # type: ignore[index]


def mlserver_label(answer: object) -> str:
    return answer["outputs"][0]["data"][0]  # type: ignore[index]


@dataclass
class Server:
    name: str
    command: list[str]
    url: str  # the prediction endpoint
    body: str
    label: Callable[[object], str]
    cwd: Path
    logs: Path
    env: dict[str, str] = field(default_factory=dict)
    expected: str = EXPECTED  # what `label` reads off a correct answer
    process: Optional[subprocess.Popen] = None
    started: float = 0.0
    ready_seconds: float = float("nan")

    def start(self) -> None:
        out = open(self.logs / f"{self.name}.out", "wb")
        err = open(self.logs / f"{self.name}.err", "wb")
        self.started = time.perf_counter()
        # Logs go to files, never to a pipe nobody reads: a full pipe would stall the access log
        # (and so the server) mid-benchmark. Own session: a Ctrl-C meant for this script does not
        # reach the servers behind our back; `stop` does that, in order.
        self.process = subprocess.Popen(self.command, cwd=self.cwd, env={**os.environ, **self.env},
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=True)
        out.close()
        err.close()

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Ready = the first correct prediction, not a log line or a health route."""
        assert self.process is not None
        deadline = time.perf_counter() + timeout
        last_error = ""
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode} before it was ready\n"
                                   + self.log_tail())
            try:
                label = self.label(post(self.url, self.body, timeout=2.0))
            except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
                last_error = repr(e)
                time.sleep(0.05)
                continue
            if label != self.expected:
                raise RuntimeError(f"{self.name} answered {label!r}, not {self.expected!r}")
            self.ready_seconds = time.perf_counter() - self.started
            return
        raise RuntimeError(f"{self.name} not ready after {timeout:g} s ({last_error})\n" + self.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        text = ""
        for suffix in ("out", "err"):
            path = self.logs / f"{self.name}.{suffix}"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                text += f"--- {path} ---\n" + "\n".join(tail) + "\n"
        return text

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the server, SIGKILL it and whatever is left of its process tree after `grace`."""
        if self.process is None:
            return
        tree = process_tree(self.process.pid)  # taken first: children are reparented as parents exit
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"{self.name} still running {grace:g} s after SIGTERM; SIGKILL")
        deadline = time.perf_counter() + 2.0
        for pid, start_time in tree:
            # Only the processes we saw, and only if the PID was not reused since.
            while proc_start_time(pid) == start_time and time.perf_counter() < deadline:
                time.sleep(0.05)
            if proc_start_time(pid) == start_time:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process = None


def proc_start_time(pid: int) -> Optional[int]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie has already released everything
        return None
    return int(fields[19])


def process_tree(root: int) -> list[tuple[int, int]]:
    """(pid, start time) of `root` and all its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        start = proc_start_time(pid)
        if start is not None:
            found.append((pid, start))
        todo.extend(parents.get(pid, []))
    return found


def tree_memory(root: int) -> tuple[float, float, int]:
    """(RSS MB, PSS MB, process count) summed over the process tree.

    RSS counts a page once per process mapping it (shared libraries, copy-on-write pages after
    fork), so a sum over processes overstates; PSS splits shared pages among their users.
    """
    rss = pss = 0
    pids = [pid for pid, _ in process_tree(root)]
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024, len(pids)


# ---------------------------------------------------------------------------------------------
# Load


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(output: str) -> WrkResult:
    def latency(percent: str) -> float:
        match = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
        if not match:
            raise ValueError(f"no {percent}% line in wrk's output:\n{output}")
        return float(match.group(1)) * _UNITS[match.group(2)]

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    requests = re.search(r"^\s*(\d+) requests in", output, re.M)
    if not rps or not requests:
        raise ValueError(f"unexpected wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        rps=float(rps.group(1)), p50_ms=latency("50"), p99_ms=latency("99"), requests=int(requests.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in sockets.groups()) if sockets else 0,
    )


def wrk_script(tmp: Path, name: str, body: str) -> Path:
    path = tmp / f"{name}.lua"
    # A Lua long string of level 1: the JSON needs no escaping, and cannot contain "]=]".
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [=[{body}]=]\n"
    )
    return path


def run_wrk(wrk: str, server: Server, script: Path, threads: int, connections: int, seconds: float) -> WrkResult:
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "--latency",
               "-s", str(script), server.url]
    # wrk stops itself after -d; the subprocess timeout is only a backstop against a hang.
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed on {server.name}:\n{result.stdout}{result.stderr}")
    return parse_wrk(result.stdout)


# ---------------------------------------------------------------------------------------------


def package_model(target: str, dist: Path, skip: bool) -> None:
    """`./pants package <target>` into dist/, or, with `skip`, check that it is there already."""
    if skip:
        if not (dist / "model.pex" / "__main__.py").exists():
            sys.exit(f"error: {dist} is missing; run ./pants package {target} (or drop --no-build)")
        return
    log(f"./pants package {target} ...")
    result = subprocess.run(["./pants", "--no-dynamic-ui", "package", target], cwd=REPO,
                            env={**os.environ, "PANTS_CONCURRENT": "true"}, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: `./pants package {target}` failed:\n{result.stderr[-3000:]}")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_floor(calls: int) -> dict[str, float]:
    result = subprocess.run(
        [str(DIST / "model.pex" / "__main__.py"), "-c", FLOOR_CODE, str(calls), json.dumps(FLOWER), EXPECTED],
        env={**os.environ, "PEX_INTERPRETER": "1"}, capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"floor measurement failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def build_baseline(ref: str, tmp: Path) -> Path:
    """The iris package as built at git ref `ref`, in a scratch clone (sharing Pants' caches)."""
    clone = scratch.clone(tmp / "baseline")
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", ref], check=True)
    log(f"./pants package models/iris: at {ref} (scratch clone) ...")
    result = subprocess.run(["./pants", "--no-dynamic-ui", "package", "models/iris:"], cwd=clone,
                            env={**os.environ, "PANTS_CONCURRENT": "true"}, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: `./pants package models/iris:` failed at {ref}:\n{result.stderr[-3000:]}")
    return clone / "dist" / "models.iris" / "iris"


def our_server(name: str, dist: Path, tmp: Path, logs: Path) -> Server:
    port = free_port()
    return Server(
        name, [str(dist / "model.pex" / "__main__.py"), "--port", str(port), "--workers", str(WORKERS),
               "--ready-file", str(tmp / f"{name.replace(' ', '_')}.ready")],
        f"http://127.0.0.1:{port}/v1/predict", JSON_BODY, ours_label, REPO, logs,
    )


def make_servers(tmp: Path, joblib: Path, peer_venvs: Optional[tuple[Path, Path]],
                 baseline: Optional[tuple[str, Path]]) -> list[Server]:
    logs = tmp / "logs"
    logs.mkdir()
    ours = [our_server("ours", DIST, tmp, logs)]
    if baseline is not None:
        ours.append(our_server(f"ours @ {baseline[0]}", baseline[1], tmp, logs))
    if peer_venvs is None:
        return ours
    bento_venv, mls_venv = peer_venvs

    bento_dir = tmp / "bentoml"
    bento_dir.mkdir()
    (bento_dir / "service.py").write_text(BENTO_SERVICE)
    port = free_port()
    bento = Server(
        "BentoML", [str(bento_venv / "bin" / "bentoml"), "serve", "service:Iris", "--host", "127.0.0.1",
                    "--port", str(port)],
        f"http://127.0.0.1:{port}/predict", JSON_BODY, ours_label, bento_dir, logs,
        env={"BENCH_JOBLIB": str(joblib), "BENCH_WORKERS": str(WORKERS), "BENTOML_HOME": str(bento_dir / "home"),
             # No usage tracking: this benchmark talks to 127.0.0.1 only.
             "BENTOML_DO_NOT_TRACK": "true"},
    )

    mls_dir = tmp / "mlserver"
    (mls_dir / "iris").mkdir(parents=True)
    http, grpc, metrics = free_port(), free_port(), free_port()
    (mls_dir / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http, "grpc_port": grpc, "metrics_port": metrics,
        "parallel_workers": WORKERS, "metrics_dir": str(mls_dir / ".metrics"),
    }))
    (mls_dir / "iris" / "model-settings.json").write_text(json.dumps({
        "name": "iris", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(joblib)},
    }))
    mls = Server(
        "MLServer", [str(mls_venv / "bin" / "mlserver"), "start", str(mls_dir)],
        f"http://127.0.0.1:{http}/v2/models/iris/infer", V2_BODY, mlserver_label, mls_dir, logs,
    )
    return [*ours, bento, mls]


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds of every wrk run (median).")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds of each measured wrk run.")
    parser.add_argument("--warmup", type=float, default=3.0, help="Seconds of unmeasured load before each run.")
    parser.add_argument("--floor-calls", type=int, default=5000, help="predict() calls timed for the floor.")
    parser.add_argument("--no-build", action="store_true", help="Use the existing dist/ instead of ./pants package.")
    parser.add_argument("--keep", action="store_true", help="Keep the temp dir (service files, server logs).")
    parser.add_argument("--no-peers", action="store_true",
                        help="Serve only ours (with --baseline: compare two builds of ours, more rounds in the time).")
    parser.add_argument("--baseline", metavar="REF",
                        help="Also serve iris as built at this git ref (e.g. the commit before a server change).")
    args = parser.parse_args()

    # SIGTERM to this script must still run the finally block that stops the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    python = find_python311()
    wrk = ensure_wrk()
    peer_venvs = None if args.no_peers else (ensure_venv("bentoml", BENTOML_PINS + iris_requirements(), python),
                                             ensure_venv("mlserver", MLSERVER_PINS + iris_requirements(), python))
    build_note = build_ours(args.no_build)

    log("floor: Model.predict in process ...")
    floor = measure_floor(args.floor_calls)

    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    joblib = iris_file("artifacts/classifier.joblib")
    packaged = DIST / "model.pex" / "artifacts" / joblib.name
    if packaged.read_bytes() != joblib.read_bytes():
        build_note += ("; " if build_note else "") + f"{packaged} differs from {joblib}, which the others serve"
    baseline = (args.baseline, build_baseline(args.baseline, tmp)) if args.baseline else None
    servers = make_servers(tmp, joblib, peer_venvs, baseline)
    loads = [(1, 1), (2, 32)]  # (wrk threads, connections)
    results: dict[tuple[str, int], list[WrkResult]] = {(s.name, c): [] for s in servers for _, c in loads}
    memory: dict[str, tuple[float, float, int]] = {}
    try:
        # One at a time, so no start-up competes with another for the two cores.
        for server in servers:
            log(f"starting {server.name} ...")
            server.start()
            server.wait_ready()
            log(f"  {server.name} ready in {server.ready_seconds:.2f} s")
        scripts = {s.name: wrk_script(tmp, s.name, s.body) for s in servers}
        for round_no in range(1, args.rounds + 1):
            for threads, connections in loads:
                for server in servers:
                    log(f"round {round_no}/{args.rounds}: {server.name} c={connections} ...")
                    if args.warmup > 0:
                        run_wrk(wrk, server, scripts[server.name], threads, connections, args.warmup)
                    results[(server.name, connections)].append(
                        run_wrk(wrk, server, scripts[server.name], threads, connections, args.duration))
        for server in servers:
            assert server.process is not None
            memory[server.name] = tree_memory(server.process.pid)
            # Still answering correctly after the load?
            if server.label(post(server.url, server.body)) != server.expected:
                raise RuntimeError(f"{server.name} answers wrongly after the load")
    finally:
        for server in servers:
            server.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    def med(name: str, c: int, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in results[(name, c)])

    ours = servers[0].name
    print(f"## Serving the iris model: 2 model workers each, wrk on 127.0.0.1, {os.cpu_count()} cores\n")
    print(f"Medians over {args.rounds} interleaved rounds of {args.duration:g} s (after {args.warmup:g} s of "
          f"warm-up) per server and concurrency; c=1 is `wrk -t1 -c1`, c=32 is `wrk -t2 -c32`.\n")
    print("| server | c=1 req/s | c=1 p50 ms | c=1 p99 ms | c=32 req/s | c=32 p50 ms | c=32 p99 ms "
          "| non-2xx | start-to-ready s | RSS MB | PSS MB | processes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for server in servers:
        name = server.name
        errors = sum(r.non_2xx + r.socket_errors for c in (1, 32) for r in results[(name, c)])
        rss, pss, count = memory[name]
        print(f"| {name} | {fmt(med(name, 1, 'rps'), 0)} | {fmt(med(name, 1, 'p50_ms'), 2)} "
              f"| {fmt(med(name, 1, 'p99_ms'), 2)} | {fmt(med(name, 32, 'rps'), 0)} "
              f"| {fmt(med(name, 32, 'p50_ms'), 2)} | {fmt(med(name, 32, 'p99_ms'), 2)} | {errors} "
              f"| {fmt(server.ready_seconds, 2)} | {fmt(rss, 0)} | {fmt(pss, 0)} | {count} |")

    print("\nThroughput ratios (median of per-round ratios, measured back to back):\n")
    for other in servers[1:]:
        for c in (1, 32):
            ratios = [a.rps / b.rps for a, b in zip(results[(ours, c)], results[(other.name, c)])]
            print(f"- ours ÷ {other.name}, c={c}: {statistics.median(ratios):.2f}×")
    predict_ms = floor["predict"] * 1e3
    print(f"\nFloor: Model.predict on one flower in process: {predict_ms * 1e3:.0f} µs (median of "
          f"{args.floor_calls} calls); the worker's whole handling of one request (JSON in, typed decode, "
          f"predict, JSON out): {floor['worker_handle'] * 1e6:.0f} µs.")
    print(f"Our c=1 p50 minus the raw predict time: {med(ours, 1, 'p50_ms') - predict_ms:.2f} ms "
          f"(the HTTP server, validation, the pipe round trip to a worker, and wrk's own share).")

    print("\nNotes:")
    print("- MLServer's payload is the V2 (Open Inference Protocol) tensor form, "
          f"`{V2_BODY}`, and its SKLearnModel answers with the label only (`predict`); ours and BentoML "
          f"take `{JSON_BODY}` and answer label + probabilities (`predict_proba`).")
    print("- Architectures: ours = 1 HTTP server process + 2 worker processes over pipes; MLServer = 1 HTTP/"
          "gRPC process + 2 parallel-inference workers (+ multiprocessing's resource tracker); BentoML = "
          "a supervisor + 2 workers that each serve HTTP and run the model. Each server's default logging "
          "is on (ours and BentoML log every request).")
    print("- start-to-ready: from process start to the first correct prediction, with every environment already "
          "installed (our PEX venv included).")
    print("- RSS/PSS: summed over each server's whole process tree from /proc after the load, processes counted "
          "in the last column; RSS counts shared pages once per process, PSS shares them out.")
    print(f"- wrk runs on the same {os.cpu_count()} cores as the servers, so c=32 throughput is a shared-CPU figure.")
    if peer_venvs is not None:
        bento_venv, mls_venv = peer_venvs
        print(f"- Versions: CPython {python_version(python)} for BentoML and MLServer; "
              f"bentoml {pip_version(bento_venv, 'bentoml')}; mlserver {pip_version(mls_venv, 'mlserver')}, "
              f"mlserver-sklearn {pip_version(mls_venv, 'mlserver-sklearn')}; "
              f"{', '.join(iris_requirements())} in every environment.")
    if build_note:
        print(f"- {build_note}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
