"""`pants deploy` for `ml_model`: package the model, push its image, and roll it out by digest to
the compute it declares, in the environment chosen with `--deploy-env`.

Pants' own `experimental-deploy` goal works too (the same rollout, through its `DeployFieldSet`):
it is what a repository that deploys other target types as well would run. `deploy` stays the
platform's goal because it says what it did per model, and says "nothing to deploy" rather than
failing when CI's changed targets hold no model.

The rollout itself is `python -m ml_deploy` from the deploy tools' PEX, run as an interactive
process (it talks to AWS, a container engine or the local gateway, none of which a sandboxed,
cached process may do), one model after another so the output reads as one log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ml_platform.image import REGISTRY_ENV, ToolPexRequest
from ml_platform.package import MLModelFieldSet, NamedPexBinary, NamedPexBinaryRequest
from ml_platform.subsystem import MLPlatform
from ml_platform.target_types import MLModelEntryPointField
from ml_contract.model_settings import Compute
from ml_contract.package_layout import GATEWAY_PEX
from pants.backend.python.util_rules.pex import Pex, PexProcess
from pants.core.goals.deploy import DeployFieldSet, DeployProcess
from pants.core.goals.package import BuiltPackage, PackageFieldSet
from pants.engine.console import Console
from pants.engine.env_vars import EnvironmentVars, EnvironmentVarsRequest
from pants.engine.addresses import UnparsedAddressInputs
from pants.engine.fs import (
    AddPrefix,
    CreateDigest,
    Digest,
    DigestContents,
    FileContent,
    GlobMatchErrorBehavior,
    MergeDigests,
    PathGlobs,
)
from pants.engine.goal import Goal, GoalSubsystem
from pants.engine.process import InteractiveProcess, InteractiveProcessResult, Process
from pants.engine.rules import Effect, Get, MultiGet, collect_rules, goal_rule, rule
from pants.engine.unions import UnionRule
from pants.engine.target import (
    FieldSet,
    FilteredTargets,
    WrappedTarget,
    WrappedTargetRequest,
)
from pants.option.option_types import BoolOption, IntOption, StrOption
from pants.util.logging import LogLevel
from pants.util.strutil import help_text, pluralize

# What the rollout may need from the user's environment beyond the registry's credentials: a
# container engine, where local deploys keep state, and a Python for packaged servers.
_DEPLOY_ENV = (*REGISTRY_ENV, "DOCKER_HOST", "XDG_STATE_HOME", "XDG_RUNTIME_DIR", "PATH", "PYENV_ROOT")
_CONFIG_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
_TOOL_INPUTS = "__ml_deploy"  # what the rollout is handed besides the package
_SPEC = f"{_TOOL_INPUTS}/release.json"


class DeploySubsystem(GoalSubsystem):
    name = "deploy"
    help = help_text(
        f"""
        Package `ml_model` targets, push their images and deploy them, by digest, to the compute
        each declares ({", ".join(f"`{c.value}`" for c in Compute)}) in one environment of the
        deploy environments file. Deploying what is already live changes nothing.
        """
    )

    env = StrOption(
        default="local",
        help=help_text(
            """
            The environment to deploy to: a top-level section of the deploy environments file
            (`[ml-platform].deploy_config`), e.g. `local` (this machine, behind the gateway at
            `http://<model>.ml.localhost:8480`), `dev` or `prod`.
            """
        ),
    )
    rollout_timeout = IntOption(
        default=None,
        help=help_text(
            """
            Seconds each deploy waits for the rollout it started (ECS: the new deployment
            COMPLETED; EC2: the new instance healthy; Lambda: the function and version Active)
            before it fails, saying what still serves. Default: the environment's
            `rollout_timeout` (1800 s unless it sets one).
            """
        ),
    )
    dry_run = BoolOption(
        default=False,
        help=help_text(
            """
            Print, for each model, what would be created or updated (and what is already live),
            without changing anything. The image is still built, but not pushed.
            """
        ),
    )


class Deploy(Goal):
    subsystem_cls = DeploySubsystem
    environment_behavior = Goal.EnvironmentBehavior.LOCAL_ONLY


@dataclass(frozen=True)
class DeployMLModelFieldSet(FieldSet):
    required_fields = (MLModelEntryPointField,)

    entry_point: MLModelEntryPointField


@dataclass(frozen=True)
class ModelRollout:
    name: str
    process: InteractiveProcess


@rule(desc="Preparing to deploy an ml_model", level=LogLevel.DEBUG)
async def prepare_rollout(
    field_set: DeployMLModelFieldSet, deploy: DeploySubsystem, ml_platform: MLPlatform
) -> ModelRollout:
    if not ml_platform.build_images:
        raise ValueError(
            f"{field_set.address}: `deploy` rolls out images by digest, but "
            "[ml-platform].build_images is off; drop `--no-ml-platform-build-images`."
        )
    config_path = ml_platform.deploy_config
    wrapped = await Get(
        WrappedTarget,
        WrappedTargetRequest(field_set.address, description_of_origin="the `deploy` goal"),
    )
    package, config_digest, tools, gateway = await MultiGet(
        Get(BuiltPackage, PackageFieldSet, MLModelFieldSet.create(wrapped.target)),
        Get(
            Digest,
            PathGlobs(
                [config_path],
                glob_match_error_behavior=GlobMatchErrorBehavior.error,
                description_of_origin="the option `[ml-platform].deploy_config`",
            ),
        ),
        Get(Pex, ToolPexRequest(ml_platform.deploy_tools, "deploy_tools", "ml_deploy.pex")),
        Get(
            NamedPexBinary,
            NamedPexBinaryRequest(
                UnparsedAddressInputs(
                    [ml_platform.gateway], owning_address=None,
                    description_of_origin="the option `[ml-platform].gateway`",
                ),
                GATEWAY_PEX, "The option `[ml-platform].gateway`",
            ),
        ),
    )
    (artifact,) = package.artifacts
    assert artifact.relpath is not None
    config = await Get(DigestContents, Digest, config_digest)
    # The environments file may read `${VAR}`s: hand exactly those to the process.
    referenced = sorted(set(_CONFIG_VARIABLE.findall(config[0].content.decode())))
    env, spec = await MultiGet(
        Get(EnvironmentVars, EnvironmentVarsRequest((*_DEPLOY_ENV, *referenced))),
        Get(Digest, CreateDigest([FileContent(_SPEC, wrapped.target.settings().to_json().encode())])),
    )
    gateway_digest = await Get(Digest, AddPrefix(gateway.digest, _TOOL_INPUTS))
    input_digest = await Get(Digest, MergeDigests([package.digest, spec, config_digest, gateway_digest]))
    argv = (
        "deploy", "--config", config_path, "--env", deploy.env,
        "--spec", _SPEC, "--package", artifact.relpath,
        "--gateway-pex", f"{_TOOL_INPUTS}/{GATEWAY_PEX}",
        *(("--dry-run",) if deploy.dry_run else ()),
        *(("--rollout-timeout", str(deploy.rollout_timeout)) if deploy.rollout_timeout is not None else ()),
    )
    process = await Get(
        Process,
        PexProcess(
            tools,
            argv=argv,
            input_digest=input_digest,
            extra_env={**env, "PEX_MODULE": "ml_deploy"},
            description=f"Deploying {field_set.address} to {deploy.env}",
        ),
    )
    return ModelRollout(field_set.address.spec, InteractiveProcess.from_process(process))


@dataclass(frozen=True)
class ExperimentalDeployMLModelFieldSet(DeployFieldSet):
    """An `ml_model` for Pants' `experimental-deploy` goal."""

    required_fields = (MLModelEntryPointField,)

    entry_point: MLModelEntryPointField


@rule(desc="Preparing to deploy an ml_model (experimental-deploy)", level=LogLevel.DEBUG)
async def experimental_deploy_process(field_set: ExperimentalDeployMLModelFieldSet) -> DeployProcess:
    # The push is part of the rollout (it runs only where the registry lacks the digest), so
    # there is nothing for the goal to publish first.
    rollout = await Get(ModelRollout, DeployMLModelFieldSet(field_set.address, field_set.entry_point))
    return DeployProcess(name=rollout.name, process=rollout.process)


@goal_rule
async def run_deploy(console: Console, deploy: DeploySubsystem, targets: FilteredTargets) -> Deploy:
    field_sets = [
        DeployMLModelFieldSet.create(t) for t in targets if DeployMLModelFieldSet.is_applicable(t)
    ]
    if not field_sets:
        console.print_stderr(f"{console.sigil_skipped()} Nothing to deploy: no `ml_model` among the targets.")
        return Deploy(exit_code=0)
    rollouts = await MultiGet(Get(ModelRollout, DeployMLModelFieldSet, fs) for fs in field_sets)
    verb = "planned" if deploy.dry_run else "deployed"
    results, exit_code = [], 0
    for rollout in rollouts:
        result = await Effect(InteractiveProcessResult, InteractiveProcess, rollout.process)
        if result.exit_code == 0:
            results.append(f"{console.sigil_succeeded()} {rollout.name} {verb} ({deploy.env})")
        else:
            exit_code = result.exit_code
            results.append(f"{console.sigil_failed()} {rollout.name} failed ({deploy.env})")
    console.print_stderr("")
    for line in results:
        console.print_stderr(line)
    console.print_stderr(f"{pluralize(len(rollouts), 'model')} {verb if exit_code == 0 else 'attempted'}.")
    return Deploy(exit_code)


def rules():
    return [*collect_rules(), UnionRule(DeployFieldSet, ExperimentalDeployMLModelFieldSet)]
