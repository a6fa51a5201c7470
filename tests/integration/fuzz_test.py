"""Every model's API under a property-based fuzzer: schemathesis (tests/fuzz, a resolve of its
own) against the real served model over HTTP on 127.0.0.1, with all of its checks on, after
validating /openapi.json as OpenAPI 3.1. Any failure it finds fails the test.

The models come from this target's runtime_package_dependencies (every model whose resolve
pants.toml declares); `test_every_model_is_fuzzed` fails for an ml_model that is not among them.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from integration.served_model import ServedModel

FUZZER = Path("tests/fuzz/fuzz.pex")
PACKAGES = sorted(p.parent for p in Path(".").glob("*/*/model.pex"))
# The probe's fault injection, which the serving tests use to crash, hang or break workers:
# these fail on purpose, so fuzzing them would only find what they are for (`remember` and
# `ticks` sleep on purpose: a slow first request, a slow stream).
FAILS_BY_DESIGN = {"probe": ["fail", "exit", "segfault", "kill", "sleep", "nan", "remember", "ticks"]}
# A real LLM spends ~0.1 s a token: fuzz it with answers of two tokens at most (longer requests
# are refused, which is fuzzed too) and fewer cases.
ENV = {"smollm2": {"SMOLLM2_MAX_TOKENS": "2"}, "support_reply": {"SUPPORT_REPLY_API_KEY": "fuzz", "SUPPORT_REPLY_MODEL": "probe"}}
MAX_EXAMPLES = {"smollm2": 10}
# Models that call another: fuzzed against the probe's OpenAI-compatible echo (its base URL).
UPSTREAM = {"support_reply": ("SUPPORT_REPLY_BASE_URL", Path("tests.models.probe/probe"), "/v1/openai/v1")}


def package_dir(build_file: Path) -> Path:
    """Where Pants writes the ml_model's package: `dist/<dir with dots>/<target name>`."""
    return Path(str(build_file.parent).replace("/", ".")) / build_file.parent.name


def test_every_model_is_fuzzed() -> None:
    builds = [b for b in sorted(Path(".").glob("models/*/BUILD")) + sorted(Path(".").glob("tests/models/*/BUILD"))
              if re.search(r"^ml_model\(", b.read_text(), re.M)]
    assert builds, "no ml_model BUILD files in the sandbox: //:model-build-files is missing"
    missing = [f"{b.parent}:{b.parent.name}" for b in builds if package_dir(b) not in PACKAGES]
    assert not missing, (f"not fuzzed: {missing}; python_tests(name='fuzz') in tests/integration/BUILD packages "
                         "ml_model_addresses(), the models whose lockfile pants.toml lists under models/<name>/")


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_fuzzer_finds_no_failure(package: Path, tmp_path: Path) -> None:
    # A big model's first start unpacks its environment (doc_links: torch) and imports it.
    env = dict(ENV.get(package.name, {}))
    upstream = None
    if package.name in UPSTREAM:
        variable, upstream_package, base = UPSTREAM[package.name]
        (tmp_path / "upstream").mkdir()
        upstream = ServedModel(upstream_package, tmp_path / "upstream", "--workers", "1")
        env[variable] = upstream.url + base
    try:
        served = ServedModel(package, tmp_path, "--workers", "1", start_timeout=300, env=env)
    except BaseException:
        if upstream:
            upstream.stop()
        raise
    report = tmp_path / "report.json"
    command = [str(FUZZER), served.url, "--report", str(report)]
    if package.name in MAX_EXAMPLES:
        command += ["--max-examples", str(MAX_EXAMPLES[package.name])]
    for operation_id in FAILS_BY_DESIGN.get(package.name, []):
        command += ["--exclude-operation-id", operation_id]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    finally:
        assert served.stop() == 0
        if upstream:
            assert upstream.stop() == 0
    assert report.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(report.read_text())
    cases = result["test_cases"]
    print(f"fuzzed {package.name}: {result['operations']['tested']} operations, {cases['generated']} cases, "
          f"{cases['unique_failures']} failures, {result['running_time']:.1f} s")
    assert result["operations"]["tested"] > 0 and cases["generated"] > 0
    assert run.returncode == 0 and cases["with_failures"] == 0 and not result["errors"], run.stdout[-6000:]
