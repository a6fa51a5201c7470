"""The README's "Adding a model", followed literally in a scratch clone with a model type no
example uses (testutil.new_model: a naive Bayes spam filter): from an empty folder, `tailor`, the
one pants.toml line it prints, `generate-lockfiles`, training, `pants run` (its /docs page and an
answer), and `pants deploy` to an answer through the gateway."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from ml_deploy import config, local
from testutil import new_model
from testutil.load import teardown_on_sigterm
from testutil.net import free_port
from testutil.scratch import scratch_repo

# The heavy and the LLM models are none of this guide's business; iris stays (the shared code's user).
LEFT_OUT = tuple(sorted(p.name for p in Path("models").iterdir() if p.name not in {"iris", "shared"}))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    teardown_on_sigterm()
    state = tmp_path_factory.mktemp("state")
    # A deploy environment of the test's own: the default `local` one listens on a fixed port.
    repo = scratch_repo(
        tmp_path_factory.mktemp("repo"), ("pants", "pants.toml", "BUILD", ".ci", "pants-plugins", "platform", "models", "tests"),
        ignore_in={"pants-plugins": ("*_test.py",), "models": LEFT_OUT},
        append={"platform/deploy.yaml": f"\nguide:\n  compute: local\n  engine: process\n  state_dir: {state}\n"
                                        f"  gateway_port: {free_port()}\n"},
    )
    environment = config.load(repo / "platform/deploy.yaml", "guide")
    try:
        yield repo, environment
    finally:
        local.stop(environment, say=lambda _: None)


def serve_with_pants_run(repo: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(["./pants", "--no-dynamic-ui", "run", f"models/{new_model.NAME}:", "--", "--port", str(port)],
                            cwd=repo, env={**os.environ, "PANTS_CONCURRENT": "true"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_new_model_type_from_an_empty_folder_to_an_answer_through_the_gateway(repo) -> None:
    repo, environment = repo
    walk = new_model.follow_the_guide(repo, "guide")
    print(walk)
    assert walk.lines_outside == [f'pants.toml: {new_model.NAME} = "models/{new_model.NAME}/{new_model.NAME}.lock"']
    build = (repo / "models" / new_model.NAME / "BUILD").read_text()
    for field in ('entry_point="src/model.py:SpamFilter"', 'train="src/train.py"', '"src/artifacts/**/*"',
                  'description="SMS spam filter'):
        assert field in build, build
    assert not list((repo / "models" / new_model.NAME).glob("src/**/BUILD")), "the code folder needs no BUILD file"

    assert new_model.ask(environment.gateway_port, "win a free prize now, click to claim")["spam"] is True
    assert new_model.ask(environment.gateway_port, "see you at lunch tomorrow")["spam"] is False
    # The gateway's page lists it.
    request = urllib.request.Request(f"http://127.0.0.1:{environment.gateway_port}/", headers={"Host": "ml.localhost"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert f">{new_model.NAME}<" in response.read().decode()


def test_pants_run_serves_it_with_its_docs_page(repo) -> None:
    repo, _ = repo
    port = free_port()
    process = serve_with_pants_run(repo, port)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/docs", timeout=5) as response:
                    assert response.headers["content-type"].startswith("text/html")
                    break
            except OSError:
                assert process.poll() is None, process.stderr.read().decode()[-4000:]
                assert time.monotonic() < deadline, "pants run did not serve the model in 300 s"
                time.sleep(0.5)
    finally:
        # Ctrl-C, as a person stops it: Pants stops the server, which stops its workers.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/docs", timeout=5)
