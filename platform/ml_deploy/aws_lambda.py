"""The `lambda` compute: one Lambda function per model version, running the model's image.

    function ml-iris-v1       PackageType Image, ImageUri <registry>/ml/iris@sha256:...
      version N               published by each deploy; its description names its image digest
      alias live -> N         what serves; its description remembers the version live before
        Function URL          on the alias: AWS_IAM by default, NONE adds the public permission
        target group          with the environment's listener: <model>.ml.<domain> through the ALB

Traffic only ever follows the alias, and the alias moves last: a deploy that fails before that
step leaves the previous version serving, and a rollback is moving the alias back.

Lambda works on each change for a while (a new function is Pending while it optimises the
image, an update InProgress, a new version Pending) and refuses another change meanwhile: every
step waits for the function to settle first (an interrupted deploy's change included), and the
publish and the alias move pass the RevisionId of what they checked, so a concurrent change
fails the deploy instead of being published or overridden.

What a version runs (image digest, memory, timeout, environment, role) decides what has to
change: a version already live with the same settings makes the deploy a no-op, and a version
published earlier with them (the one before a rollback, or one a failed deploy published) is
served again instead of publishing another.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ml_contract.model_settings import LAMBDA_ENV_LIMIT_BYTES, ModelSettings, env_bytes
from ml_contract.package_layout import LAMBDA_RESPONSE_STREAMING_ENV
from ml_deploy import alb, aws, ecr_repository, publish, secrets
from ml_runtime.aws_secrets import SECRETS_ENV
from ml_deploy.config import ConfigError, Environment
from ml_deploy.plan import CREATE, DELETE, REPLACE, UNCHANGED, UPDATE, Plan
from ml_deploy.release import Release

ALIAS = "live"
# The statement id the Lambda console gives the public permission of an AuthType NONE URL.
# A public (AuthType NONE) Function URL needs both statements since October 2025: invoking the URL,
# and invoking the function through it (InvokedViaFunctionUrl); with only the first it answers 403.
PUBLIC_URL_STATEMENT = "FunctionURLAllowPublicAccess"
PUBLIC_URL_INVOKE_STATEMENT = "FunctionURLAllowInvokeAction"
PUBLIC_URL_STATEMENTS = (PUBLIC_URL_STATEMENT, PUBLIC_URL_INVOKE_STATEMENT)
ALB_STATEMENT = "ml-load-balancer-invoke"  # lets the ALB's Lambda target group invoke the alias
# Lambda's own limits, checked before anything is created so that the error names the model.
MEMORY_RANGE = (128, 10240)  # MiB
TIMEOUT_RANGE = (1, 900)  # seconds
# States of a function (and of a version) while Lambda is still working on the last change: any
# change meanwhile is refused with ResourceConflictException, so every change waits them out.
BUSY_STATES = ("Pending",)
BUSY_UPDATE_STATES = ("InProgress",)

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_PREVIOUS = re.compile(r"previous version (\d+)")


class NothingToRollBack(ConfigError):
    """A rollback asked for where there is no earlier version to serve."""


@dataclass(frozen=True)
class Settings:
    """What a function version runs: two versions with equal settings serve the same."""

    digest: Optional[str]  # None: not known (a version this driver did not publish)
    memory: int
    timeout: int
    env: Tuple[Tuple[str, str], ...]
    role: str

    @classmethod
    def of(cls, configuration: Mapping[str, Any], digest: Optional[str]) -> "Settings":
        variables = (configuration.get("Environment") or {}).get("Variables") or {}
        return cls(digest, int(configuration.get("MemorySize") or 0), int(configuration.get("Timeout") or 0),
                   tuple(sorted(variables.items())), configuration.get("Role", ""))

    def differences(self, wanted: "Settings") -> List[str]:
        changes = []
        if self.digest != wanted.digest:
            changes.append(f"image {_short(self.digest)} -> {_short(wanted.digest)}")
        if self.memory != wanted.memory:
            changes.append(f"memory {self.memory} -> {wanted.memory} MiB")
        if self.timeout != wanted.timeout:
            changes.append(f"timeout {self.timeout} -> {wanted.timeout} s")
        if self.env != wanted.env:
            changes.append("environment variables")
        if self.role != wanted.role:
            changes.append(f"role -> {wanted.role}")
        return changes


@dataclass
class FunctionState:
    """What AWS holds for one function, read before planning (read-only calls only)."""

    name: str
    arn: str = ""
    latest: Optional[Settings] = None  # $LATEST; None: no such function
    versions: Dict[int, Settings] = dataclasses.field(default_factory=dict)
    tags: Dict[str, str] = dataclasses.field(default_factory=dict)
    state: str = ""  # State of $LATEST: Pending, Active, Inactive or Failed
    state_reason: str = ""
    revision: str = ""  # RevisionId of $LATEST, read before planning
    alias_version: Optional[int] = None  # None: no alias `live`
    alias_description: str = ""
    alias_revision: str = ""
    url: str = ""
    url_auth: str = ""
    url_invoke_mode: str = ""
    public_permission: List[str] = field(default_factory=list)  # the public URL statements present
    statements: List[str] = field(default_factory=list)  # every statement id of the alias' policy

    @property
    def exists(self) -> bool:
        return self.latest is not None

    @property
    def live(self) -> Optional[Settings]:
        return self.versions.get(self.alias_version) if self.alias_version is not None else None

    def serving(self) -> str:
        if self.alias_version is not None:
            digest = self.live.digest if self.live else None
            return f"alias {ALIAS} -> version {self.alias_version} ({digest or 'image unknown'})"
        if self.exists:
            return f"nothing (function {self.name} has no alias {ALIAS} yet)"
        return "nothing (new function)"


def plan(release: Release, environment: Environment) -> Plan:
    """Push, log group, function, version, alias `live`, Function URL: what must change of them."""
    _check(release, environment)
    lam = aws.client(environment, "lambda")
    function = release.resource_name
    # Each secret must exist now; the function reads it with its own role at start.
    found = secrets.sources(release.settings.secrets, environment, release.name, secrets.AWS_KINDS)
    secrets.aws_arns(found, lambda service: aws.client(environment, service))
    state = read_state(lam, function)
    wanted = Settings(release.digest, release.settings.effective_memory, release.settings.timeout,
                      tuple(sorted(_function_env(release, environment, found).items())), environment.lambda_role or "")
    size = env_bytes(dict(wanted.env))
    if size > LAMBDA_ENV_LIMIT_BYTES:
        raise ConfigError(f"{release.settings.address or release.name}: the function's environment is {size:,} bytes "
                          f"(the model's env, its secrets' sources, the platform's variables), over Lambda's "
                          f"{LAMBDA_ENV_LIMIT_BYTES:,}: shorten `env` or the secrets' sources")
    result = Plan(target=f"{release.name} v{release.version} -> lambda ({environment.name})",
                  digest=release.digest, serving=state.serving(), url=state.url)
    publish.plan_push(result, release, environment)
    ecr_repository.plan_repository(result, release, environment, lambda_pull=True)
    aws.plan_log_group(result, environment, f"/aws/lambda/{function}")
    _plan_function_and_version(result, lam, release, environment, state, wanted)
    _plan_url(result, lam, function, environment, state)
    _plan_concurrency(result, lam, release, environment, state)
    if environment.listener:
        _plan_load_balancer(result, lam, release, environment, state)
    return result


def plan_rollback(name: str, version: int, environment: Environment) -> Plan:
    """Move alias `live` back to the version it served before the last deploy (a second rollback
    moves it forward again: the alias always remembers the version it left)."""
    # One naming rule for the function, Release's (the other fields do not matter here).
    function = Release(ModelSettings(name=name, version=version, compute="lambda"), Path("."), "").resource_name
    lam = aws.client(environment, "lambda")
    state = read_state(lam, function)
    where = f"{name} v{version} in environment {environment.name!r}"
    if not state.exists:
        raise NothingToRollBack(f"{where}: Lambda function {function} does not exist (never deployed)")
    if state.alias_version is None:
        raise NothingToRollBack(f"{where}: {function} has no alias {ALIAS}, so nothing serves to roll back")
    match = _PREVIOUS.search(state.alias_description)
    if not match:
        raise NothingToRollBack(
            f"{where}: alias {function}:{ALIAS} (version {state.alias_version}) remembers no earlier "
            f"version: it was created by the first deploy, so there is nothing to roll back to")
    previous = int(match.group(1))
    if previous not in state.versions:
        raise NothingToRollBack(f"{where}: version {previous}, which served before version "
                                f"{state.alias_version}, no longer exists in {function}")
    current, digest = state.alias_version, state.versions[previous].digest
    result = Plan(target=f"{name} v{version} -> lambda ({environment.name}): rollback",
                  digest=digest or "image unknown", serving=state.serving(), url=state.url)

    def move_back() -> str:
        lam.update_alias(FunctionName=function, Name=ALIAS, FunctionVersion=str(previous),
                         Description=_alias_description(digest, previous=current),
                         **_revision(state.alias_revision))
        if digest:
            lam.tag_resource(Resource=state.arn, Tags={**state.tags, "ml.digest": digest})
        return f"alias {ALIAS} -> version {previous} ({digest or 'image unknown'})"

    result.add(UPDATE, f"Lambda alias {function}:{ALIAS}", f"version {current} -> {previous}", move_back)
    return result


def read_state(lam: Any, function: str) -> FunctionState:
    state = FunctionState(function)
    try:
        found = lam.get_function(FunctionName=function)
    except lam.exceptions.ResourceNotFoundException:
        return state
    configuration = found["Configuration"]
    state.arn = configuration["FunctionArn"]
    state.latest = Settings.of(configuration, _digest_in(found.get("Code", {}).get("ImageUri", "")))
    state.tags = dict(found.get("Tags") or {})
    state.state, state.revision = configuration.get("State", ""), configuration.get("RevisionId", "")
    state.state_reason = configuration.get("StateReason") or configuration.get("StateReasonCode") or ""
    for page in lam.get_paginator("list_versions_by_function").paginate(FunctionName=function):
        for version in page["Versions"]:
            if version["Version"] != "$LATEST":
                # A version's image is the digest it was published with (in its description):
                # moto 5.2.5 answers get_function(Qualifier=N) with $LATEST's ImageUri, which would
                # make an old version look like it runs the newest image. Real Lambda keeps version
                # descriptions too; a version without one is never taken for any image.
                state.versions[int(version["Version"])] = Settings.of(
                    version, _digest_in(version.get("Description", "")))
    try:
        alias = lam.get_alias(FunctionName=function, Name=ALIAS)
    except lam.exceptions.ResourceNotFoundException:
        pass
    else:
        state.alias_version = int(alias["FunctionVersion"])
        state.alias_description = alias.get("Description", "")
        state.alias_revision = alias.get("RevisionId", "")
    try:
        url = lam.get_function_url_config(FunctionName=function, Qualifier=ALIAS)
    except lam.exceptions.ResourceNotFoundException:
        pass
    else:
        state.url, state.url_auth = url["FunctionUrl"], url["AuthType"]
        state.url_invoke_mode = url.get("InvokeMode") or "BUFFERED"
    try:
        policy = json.loads(lam.get_policy(FunctionName=function, Qualifier=ALIAS)["Policy"])
    except lam.exceptions.ResourceNotFoundException:
        pass
    else:
        present = {s.get("Sid") for s in policy.get("Statement", [])}
        state.public_permission = [sid for sid in PUBLIC_URL_STATEMENTS if sid in present]
        state.statements = sorted(sid for sid in present if sid)
    return state


def _check(release: Release, environment: Environment) -> None:
    why = f"deploying {release.name} v{release.version} to lambda"
    environment.require("lambda_role", "registry", why=why)
    if release.settings.gpu:
        raise ConfigError(f"{release.settings.address or release.name}: Lambda has no GPUs, but the model asks "
                          f"for gpu={release.settings.gpu}; deploy it to compute='ec2' instead")
    if not MEMORY_RANGE[0] <= release.settings.effective_memory <= MEMORY_RANGE[1]:
        raise ConfigError(f"{release.settings.address or release.name}: memory={release.settings.effective_memory} MiB is outside "
                          f"Lambda's {MEMORY_RANGE[0]}-{MEMORY_RANGE[1]} MiB")
    if not TIMEOUT_RANGE[0] <= release.settings.timeout <= TIMEOUT_RANGE[1]:
        raise ConfigError(f"{release.settings.address or release.name}: timeout={release.settings.timeout} s is outside "
                          f"Lambda's {TIMEOUT_RANGE[0]}-{TIMEOUT_RANGE[1]} s")
    ecr_repository.check_lambda_registry(release, environment)


def _plan_function_and_version(result: Plan, lam: Any, release: Release, environment: Environment,
                               state: FunctionState, wanted: Settings) -> None:
    function = release.resource_name
    fn_resource = f"Lambda function {function}"
    version_resource = f"Lambda version of {function}"
    alias_resource = f"Lambda alias {function}:{ALIAS}"
    tags = {**state.tags, **release.labels()}
    # Which version the alias is to serve; filled in by the publish step when there is one.
    chosen: Dict[str, int] = {}

    def configuration() -> Dict[str, Any]:
        return dict(Role=wanted.role, MemorySize=wanted.memory, Timeout=wanted.timeout,
                    Environment={"Variables": dict(wanted.env)},
                    Description=f"{release.name} v{release.version} ({release.settings.address or 'ml_model'})")

    if state.live == wanted:
        assert state.alias_version is not None
        result.add(UNCHANGED, fn_resource, f"version {state.alias_version} runs {release.digest}")
        result.add(UNCHANGED, version_resource, f"version {state.alias_version}")
        result.add(UNCHANGED, alias_resource, f"version {state.alias_version}")
        _plan_tags(result, lam, state, tags)
        return

    # A version published earlier with exactly these settings is served again, not re-published.
    reusable = max((n for n, s in state.versions.items() if s == wanted), default=None)

    def create() -> None:
        lam.create_function(FunctionName=function, PackageType="Image",
                            Code={"ImageUri": release.image_uri(environment)}, Publish=False,
                            Tags=tags, **configuration())
        _settle(lam, function, result, environment)

    creating = f"image {release.image_uri(environment)}, {wanted.memory} MiB, timeout {wanted.timeout} s"
    if not state.exists:
        result.add(CREATE, fn_resource, creating, create)
    elif state.state == "Failed" and state.alias_version is None:
        # Its creation failed (e.g. Lambda could not pull the image) and nothing serves from it:
        # a Failed function takes no update, so it is made again.
        def recreate() -> None:
            lam.delete_function(FunctionName=function)
            create()

        result.add(REPLACE, fn_resource, f"its creation failed ({state.state_reason or 'state Failed'}); "
                                         f"deleted and created again: {creating}", recreate)
    elif reusable is not None:
        result.add(UNCHANGED, fn_resource, f"version {reusable} already runs {release.digest}")
    elif state.latest == wanted:
        result.add(UNCHANGED, fn_resource, f"$LATEST already runs {release.digest}")
    else:
        assert state.latest is not None
        latest = state.latest

        def update() -> None:
            # A change still under way (an interrupted deploy's, say) must finish first: Lambda
            # refuses another meanwhile (ResourceConflictException).
            _settle(lam, function, result, environment, own_update=False)
            if latest.digest != wanted.digest:
                lam.update_function_code(FunctionName=function, ImageUri=release.image_uri(environment),
                                         Publish=False)
                _settle(lam, function, result, environment)
            if dataclasses.replace(latest, digest=None) != dataclasses.replace(wanted, digest=None):
                lam.update_function_configuration(FunctionName=function, **configuration())
                _settle(lam, function, result, environment)

        result.add(UPDATE, fn_resource, "; ".join(latest.differences(wanted)), update)

    if reusable is not None:
        chosen["version"] = reusable
        result.add(UNCHANGED, version_resource, f"version {reusable} (published before)")
    else:
        def publish_version() -> str:
            # $LATEST as it is now, settled; published only if it is what this release wants
            # and nobody changes it before the publish does (RevisionId).
            found = _settle(lam, function, result, environment, own_update=False)
            now = Settings.of(found["Configuration"], _digest_in(found.get("Code", {}).get("ImageUri", "")))
            if now != wanted:
                raise RuntimeError(f"Lambda function {function} changed while this deploy ran (another "
                                   f"deploy?): {'; '.join(now.differences(wanted))}; deploy again")
            published = lam.publish_version(FunctionName=function, Description=_version_description(release),
                                            **_revision(found["Configuration"].get("RevisionId", "")))
            chosen["version"] = int(published["Version"])
            _settle(lam, function, result, environment, version=published["Version"])
            return f"version {published['Version']}"

        result.add(CREATE, version_resource, f"{release.name} v{release.version} image {release.digest}",
                   publish_version)

    previous = state.alias_version
    target = f"version {reusable}" if reusable is not None else "the version published above"

    def point_alias() -> str:
        version = str(chosen["version"])
        description = _alias_description(release.digest, previous=previous)
        if previous is None:
            lam.create_alias(FunctionName=function, Name=ALIAS, FunctionVersion=version, Description=description)
        else:
            # Only if nobody moved it since the plan was made (a concurrent deploy or rollback).
            lam.update_alias(FunctionName=function, Name=ALIAS, FunctionVersion=version, Description=description,
                             **_revision(state.alias_revision))
        return f"alias {ALIAS} -> version {version}"

    if previous is None:
        result.add(CREATE, alias_resource, f"-> {target}", point_alias)
    else:
        result.add(UPDATE, alias_resource, f"version {previous} -> {target}", point_alias)
    if state.exists:  # a new function gets its tags when it is created
        _plan_tags(result, lam, state, tags)


def _plan_tags(result: Plan, lam: Any, state: FunctionState, tags: Dict[str, str]) -> None:
    """The function's tags name the model version and the image `live` serves."""
    resource = f"tags of Lambda function {state.name}"
    if all(state.tags.get(k) == v for k, v in tags.items()):
        result.add(UNCHANGED, resource)
        return
    changed = {k: v for k, v in tags.items() if state.tags.get(k) != v}

    def tag() -> None:
        lam.tag_resource(Resource=state.arn, Tags=changed)

    result.add(UPDATE, resource, ", ".join(f"{k}={v}" for k, v in sorted(changed.items())), tag)


def _function_env(release: Release, environment: Environment, found: List[secrets.SecretSource]) -> Dict[str, str]:
    """The function's environment: the model's, whether its Function URL streams (the runtime
    then answers in Lambda's streaming response mode), and where its secrets are (the server
    reads them at start, ml_runtime.aws_secrets): their sources, never their values."""
    streaming = {LAMBDA_RESPONSE_STREAMING_ENV: "1"} if environment.function_url_invoke_mode == "RESPONSE_STREAM" else {}
    listed = {SECRETS_ENV: json.dumps({s.name: f"{s.kind}:{s.where}" for s in found}, sort_keys=True)} if found else {}
    return {**release.runtime_env(environment), **streaming, **listed}


def _plan_url(result: Plan, lam: Any, function: str, environment: Environment, state: FunctionState) -> None:
    auth, mode = environment.function_url_auth, environment.function_url_invoke_mode
    resource = f"Function URL of {function}:{ALIAS}"

    def create_url() -> str:
        url = lam.create_function_url_config(FunctionName=function, Qualifier=ALIAS, AuthType=auth, InvokeMode=mode)
        result.url = url["FunctionUrl"]
        return result.url

    def update_url() -> None:
        lam.update_function_url_config(FunctionName=function, Qualifier=ALIAS, AuthType=auth, InvokeMode=mode)

    changes = [f"{name} {now} -> {wanted}" for name, now, wanted in
               (("AuthType", state.url_auth, auth), ("InvokeMode", state.url_invoke_mode, mode)) if now != wanted]
    if not state.url:
        result.add(CREATE, resource, f"AuthType {auth}, InvokeMode {mode}", create_url)
    elif changes:
        result.add(UPDATE, resource, "; ".join(changes), update_url)
    else:
        result.add(UNCHANGED, resource, f"AuthType {auth}, InvokeMode {mode}")

    permission = f"public invoke permission of {function}:{ALIAS}"

    def allow_public() -> None:
        if PUBLIC_URL_STATEMENT not in state.public_permission:
            lam.add_permission(FunctionName=function, Qualifier=ALIAS, StatementId=PUBLIC_URL_STATEMENT,
                               Action="lambda:InvokeFunctionUrl", Principal="*", FunctionUrlAuthType="NONE")
        if PUBLIC_URL_INVOKE_STATEMENT not in state.public_permission:
            lam.add_permission(FunctionName=function, Qualifier=ALIAS, StatementId=PUBLIC_URL_INVOKE_STATEMENT,
                               Action="lambda:InvokeFunction", Principal="*", InvokedViaFunctionUrl=True)

    def remove_public() -> None:
        for sid in state.public_permission:
            lam.remove_permission(FunctionName=function, Qualifier=ALIAS, StatementId=sid)

    wanted = "lambda:InvokeFunctionUrl and lambda:InvokeFunction via the URL, for everyone (AuthType NONE)"
    if auth == "NONE" and len(state.public_permission) < len(PUBLIC_URL_STATEMENTS):
        # Without both an AuthType NONE URL answers 403 to everyone.
        result.add(CREATE if not state.public_permission else UPDATE, permission, wanted, allow_public)
    elif auth == "NONE":
        result.add(UNCHANGED, permission)
    elif state.public_permission:
        result.add(DELETE, permission, f"the URL's AuthType is {auth} now", remove_public)


def _plan_concurrency(result: Plan, lam: Any, release: Release, environment: Environment,
                      state: FunctionState) -> None:
    """The model's reserved concurrency (the function's) and provisioned concurrency (alias
    `live`'s: environments kept loaded, waited for until READY)."""
    function, settings = release.resource_name, release.settings
    reserved = (lam.get_function_concurrency(FunctionName=function).get("ReservedConcurrentExecutions")
                if state.exists else None)
    resource = f"reserved concurrency of {function}"
    if reserved == settings.reserved_concurrency:
        result.add(UNCHANGED, resource, str(reserved) if reserved is not None else "none (the account's pool)")
    elif settings.reserved_concurrency is None:
        result.add(DELETE, resource, f"{reserved} -> the account's pool",
                   lambda: lam.delete_function_concurrency(FunctionName=function))
    else:
        wanted = settings.reserved_concurrency
        result.add(CREATE if reserved is None else UPDATE, resource, f"{reserved} -> {wanted}" if reserved is not None
                   else str(wanted), lambda: lam.put_function_concurrency(FunctionName=function,
                                                                          ReservedConcurrentExecutions=wanted))
    provisioned = None
    if state.alias_version is not None:
        try:
            provisioned = lam.get_provisioned_concurrency_config(
                FunctionName=function, Qualifier=ALIAS)["RequestedProvisionedConcurrentExecutions"]
        except lam.exceptions.ProvisionedConcurrencyConfigNotFoundException:
            pass
    resource = f"provisioned concurrency of {function}:{ALIAS}"
    wanted_provisioned = settings.provisioned_concurrency
    if provisioned == wanted_provisioned:
        result.add(UNCHANGED, resource, str(provisioned) if provisioned else "none (scales to zero)")
        return
    if wanted_provisioned is None:
        result.add(DELETE, resource, f"{provisioned} -> none (scales to zero)",
                   lambda: lam.delete_provisioned_concurrency_config(FunctionName=function, Qualifier=ALIAS))
        return

    def provision() -> str:
        lam.put_provisioned_concurrency_config(FunctionName=function, Qualifier=ALIAS,
                                               ProvisionedConcurrentExecutions=wanted_provisioned)

        def read() -> Tuple[bool, str]:
            config = lam.get_provisioned_concurrency_config(FunctionName=function, Qualifier=ALIAS)
            if config["Status"] == "FAILED":
                raise RuntimeError(f"provisioned concurrency of {function}:{ALIAS} FAILED: "
                                   f"{config.get('StatusReason') or 'no reason given'}")
            return config["Status"] == "READY", (f"{config['Status']}, {config.get('AvailableProvisionedConcurrentExecutions', 0)}"
                                                 f" of {wanted_provisioned} environments loaded")

        aws.wait_for(f"provisioned concurrency of {function}:{ALIAS}", read, environment, result.say)
        return f"{wanted_provisioned} environments loaded"

    result.add(CREATE if provisioned is None else UPDATE, resource,
               f"{provisioned} -> {wanted_provisioned}" if provisioned else f"{wanted_provisioned} environments kept loaded",
               provision)


def _plan_load_balancer(result: Plan, lam: Any, release: Release, environment: Environment,
                        state: FunctionState) -> None:
    """Under the namespace too, as every other compute: <model>.ml.<domain>/v<N>/... through the
    environment's ALB listener, whose rules forward to a Lambda target group holding the alias
    (alb.py; the runtime takes ALB events as it takes Function URL ones)."""
    function = release.resource_name
    outputs: Dict[str, str] = {}
    alb.plan_target_group(result, release, environment, target_type="lambda", outputs=outputs)
    elb = aws.client(environment, "elbv2")
    registered = (f"{state.arn}:{ALIAS}" in _lambda_targets(elb, outputs[alb.TARGET_GROUP_ARN])
                  if alb.TARGET_GROUP_ARN in outputs and state.arn else False)
    permission = f"load balancer invoke permission of {function}:{ALIAS}"
    if ALB_STATEMENT in state.statements:
        result.add(UNCHANGED, permission)
    else:
        def allow() -> None:
            lam.add_permission(FunctionName=function, Qualifier=ALIAS, StatementId=ALB_STATEMENT,
                               Action="lambda:InvokeFunction", Principal="elasticloadbalancing.amazonaws.com",
                               SourceArn=outputs[alb.TARGET_GROUP_ARN])

        result.add(CREATE, permission, f"from target group {alb.target_group_name(release)}", allow)
    target = f"target of {alb.target_group_name(release)}"
    if registered:
        result.add(UNCHANGED, target, f"alias {ALIAS}")
    else:
        def register() -> None:
            arn = lam.get_alias(FunctionName=function, Name=ALIAS)["AliasArn"]
            elb.register_targets(TargetGroupArn=outputs[alb.TARGET_GROUP_ARN], Targets=[{"Id": arn}])

        result.add(CREATE, target, f"alias {function}:{ALIAS}", register)
    url = result.url
    alb.plan_listener_rule(result, release, environment, outputs)
    result.url = url or result.url  # the Function URL stays the plan's URL where there is one


def _lambda_targets(elb: Any, group: str) -> List[str]:
    return [h["Target"]["Id"] for h in elb.describe_target_health(TargetGroupArn=group)["TargetHealthDescriptions"]]


def _settle(lam: Any, function: str, plan: Plan, environment: Environment, *, own_update: bool = True,
            version: Optional[str] = None) -> Dict[str, Any]:
    """Wait until Lambda has finished the function's last change (or made `version` Active);
    its GetFunction answer then. `own_update`: the last change is this deploy's, so a failed one
    fails the deploy (an earlier deploy's failed update is only replaced by this one's)."""
    found: Dict[str, Any] = {}
    what = f"Lambda function {function}" + (f" version {version}" if version else "")

    def read() -> Tuple[bool, str]:
        if version:
            configuration = lam.get_function_configuration(FunctionName=function, Qualifier=version)
            found.update(Configuration=configuration)
        else:
            found.clear()
            found.update(lam.get_function(FunctionName=function))
            configuration = found["Configuration"]
        state, update = configuration.get("State", ""), configuration.get("LastUpdateStatus") or ""
        reason = configuration.get("StateReason") or configuration.get("LastUpdateStatusReason") or ""
        if state == "Failed" or (own_update and update == "Failed"):
            raise RuntimeError(f"{what} failed: state {state}, last update {update or 'none'}: "
                               f"{reason or 'no reason given'} ({configuration.get('StateReasonCode') or configuration.get('LastUpdateStatusReasonCode') or ''})")
        busy = state in BUSY_STATES or update in BUSY_UPDATE_STATES
        return not busy, f"state {state}" + (f", last update {update}" if update else "")

    aws.wait_for(what, read, environment, plan.say)
    return found


def _revision(revision: str) -> Dict[str, str]:
    """RevisionId for a call that must only change what was read (none known: no condition)."""
    return {"RevisionId": revision} if revision else {}


def _version_description(release: Release) -> str:
    return f"{release.name} v{release.version} image {release.digest}"


def _alias_description(digest: Optional[str], *, previous: Optional[int]) -> str:
    served = f"serves image {digest}" if digest else "serves an image this tool did not publish"
    return f"{served}; previous version {previous}" if previous is not None else served


def _digest_in(text: str) -> Optional[str]:
    match = _DIGEST.search(text)
    return match.group(0) if match else None


def _short(digest: Optional[str]) -> str:
    return digest[:19] if digest else "unknown"
