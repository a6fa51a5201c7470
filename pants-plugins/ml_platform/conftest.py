"""A RuleRunner with the Python backend and this plugin, set up like the repo's pants.toml."""

from __future__ import annotations

import re
from textwrap import dedent
import sys
from pathlib import Path
from typing import Any

import pytest

from ml_platform import register
from ml_platform.package import (
    GeneratedArtifacts,
    LockedSystemPackages,
    MLModelFieldSet,
    ResolvedModelHandler,
    SystemPackagesRequest,
)
from ml_platform.publish import PublishMLModelRequest
from pants.core.goals.publish import PublishProcesses
from pants.backend.python import target_types_rules
from pants.backend.python.goals import package_pex_binary
from pants.backend.python.dependency_inference import rules as python_dependency_inference
from pants.backend.python.macros import python_requirements
from pants.backend.python.macros.python_requirements import PythonRequirementsTargetGenerator
from pants.backend.python.target_types import (
    PexBinary,
    PythonRequirementTarget,
    PythonSourcesGeneratorTarget,
    PythonSourceTarget,
)
from pants.backend.python.util_rules import pex_from_targets, python_sources
from pants.core.goals.package import BuiltPackage
from pants.core.target_types import FilesGeneratorTarget, FileTarget, ResourcesGeneratorTarget, ResourceTarget
from pants.core.target_types import rules as core_target_types_rules
from pants.engine.rules import QueryRule
from pants.testutil.rule_runner import RuleRunner


def _repo_pex_cli_options() -> list[str]:
    """The [pex-cli] options of the repo's pants.toml: GitHub, Pants' default, is unreachable."""
    toml = Path("pants.toml").read_text()
    section = toml[toml.index("[pex-cli]") :]

    def value(key: str) -> str:
        match = re.search(rf"^{key} = (.+)$", section, re.MULTILINE)
        assert match, f"pants.toml [pex-cli] has no {key}"
        return match.group(1).strip('"')

    url_template = value("url_template").replace("%(homedir)s", str(Path.home()))
    return [
        f"--pex-cli-version={value('version')}",
        f"--pex-cli-known-versions={value('known_versions')}",
        f"--pex-cli-url-template={url_template}",
    ]


def runtime_sources() -> dict[str, str]:
    """The platform runtime's files, from the test's sandbox, under their repo paths."""
    for entry in sys.path:
        package = Path(entry) / "ml_runtime"
        if (package / "once.py").is_file():
            return {
                f"platform/ml_runtime/{path.name}": path.read_text()
                for path in sorted(package.glob("*.py"))
            }
    raise AssertionError("ml_runtime is not in the sandbox: is //platform:ml_runtime a dependency?")


# A lockfile for a resolve without requirements, as `generate-lockfiles` would write it.
EMPTY_LOCKFILE = """\
// --- BEGIN PANTS LOCKFILE METADATA: DO NOT EDIT OR REMOVE ---
// {
//   "version": 3,
//   "valid_for_interpreter_constraints": ["CPython==3.11.*"],
//   "generated_with_requirements": [],
//   "manylinux": "manylinux2014",
//   "requirement_constraints": [],
//   "only_binary": [],
//   "no_binary": []
// }
// --- END PANTS LOCKFILE METADATA ---
{
  "allow_builds": true, "allow_prereleases": false, "allow_wheels": true,
  "build_isolation": true, "constraints": [], "locked_resolves": [], "path_mappings": {},
  "pex_version": "2.1.137", "pip_version": "20.3.4-patched", "prefer_older_binary": false,
  "requirements": [], "requires_python": ["==3.11.*"], "resolver_version": "pip-2020-resolver",
  "style": "universal", "target_systems": ["linux", "mac"], "transitive": true, "use_pep517": null
}
"""


ENV_INHERIT = {"PATH", "PYENV_ROOT", "HOME"}


def repo_options(*extra: str) -> list[str]:
    """Options like the repo's pants.toml, for the scratch repositories the tests write."""
    return [
        "--source-root-patterns=['/platform', '/models/*']",
        "--python-interpreter-constraints=['CPython==3.11.*']",
        "--python-enable-resolves",
        "--python-resolves={'m': 'models/m/m.lock', 'other': 'models/other/other.lock'}",
        "--python-pip-version=20.3.4-patched",
        "--python-infer-use-rust-parser",
        "--python-bootstrap-search-path=['<PYENV>', '<PATH>']",
        # Images are built and checked by tests/integration; here only the packaging rules.
        "--no-ml-platform-build-images",
        *_repo_pex_cli_options(),
    ] + list(extra)


def make_rule_runner(*extra_rules: Any, requirements: bool = False) -> RuleRunner:
    """The plugin's rules (and `extra_rules`) over a scratch repository with a stub server;
    `requirements`: with `python_requirements` targets too (their lockfile targets off, whose
    rules are not loaded here)."""
    if requirements:
        extra_rules = (*extra_rules, *python_requirements.rules())
    rule_runner = RuleRunner(
        rules=[
            *extra_rules,
            *pex_from_targets.rules(),
            *package_pex_binary.rules(),
            *python_sources.rules(),
            *python_dependency_inference.rules(),
            *target_types_rules.rules(),
            *core_target_types_rules(),
            *register.rules(),
            QueryRule(BuiltPackage, [MLModelFieldSet]),
            QueryRule(ResolvedModelHandler, [MLModelFieldSet]),
            QueryRule(GeneratedArtifacts, [MLModelFieldSet]),
            QueryRule(LockedSystemPackages, [SystemPackagesRequest]),
            QueryRule(PublishProcesses, [PublishMLModelRequest]),
        ],
        target_types=[
            PythonSourcesGeneratorTarget,
            PythonSourceTarget,
            PexBinary,
            PythonRequirementTarget,
            PythonRequirementsTargetGenerator,
            *register.target_types(),
            ResourcesGeneratorTarget,
            ResourceTarget,
            FilesGeneratorTarget,
            FileTarget,
        ],
    )
    rule_runner.set_options(repo_options(*(["--no-python-enable-lockfile-targets"] if requirements else [])),
                            env_inherit=ENV_INHERIT)
    rule_runner.write_files(
        {
            **runtime_sources(),
            "platform/BUILD": dedent(
                """\
                resources(name='ml_runtime', sources=['ml_runtime/*.py'])
                python_sources(name='stub', sources=['stub_server.py'], resolve='m')
                pex_binary(name='server', entry_point='stub_server.py', resolve='m',
                           output_path='server.pex')
                """
            ),
            # Stands in for the real server (whose resolve is not set up here): prints its argv.
            "platform/stub_server.py": "import json, sys\nprint(json.dumps(sys.argv[1:]))\n",
            "models/m/m.lock": EMPTY_LOCKFILE,
            "models/other/other.lock": EMPTY_LOCKFILE,
        }
    )
    return rule_runner


@pytest.fixture
def rule_runner() -> RuleRunner:
    return make_rule_runner()
