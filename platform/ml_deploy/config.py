"""The deploy environments file (`platform/deploy.yaml`): one top-level section per environment.

    dev:
      region: eu-west-1
      registry: 123456789012.dkr.ecr.eu-west-1.amazonaws.com
      domain: example.com
      cluster: ml-dev
      ...

String values may name environment variables, `${VAR}` or `${VAR:-default}`, so that CI can
supply account ids and endpoints without editing the file. Every key is checked: an unknown
key, a wrong type or a missing required value fails naming the file, the environment and the
key.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from ml_contract.model_settings import Compute

COMPUTE_TYPES = tuple(c.value for c in Compute)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Environment:
    """One environment's settings. Field docs double as the file's reference (`describe()`)."""

    name: str
    compute: Optional[str] = field(default=None, metadata={
        "help": "Run every model on this compute instead of the one it declares (e.g. `local`)."})
    domain: str = field(default="localhost", metadata={
        "help": "Models answer at <model>.ml.<domain>/v<version>/..."})
    registry: Optional[str] = field(default=None, metadata={
        "help": "Registry images are pushed to and deployed from, by digest "
                "(`<account>.dkr.ecr.<region>.amazonaws.com`, `127.0.0.1:5000`). "
                "Required for AWS compute; optional for local."})
    registry_auth: str = field(default="auto", metadata={
        "help": "`auto`: ML_REGISTRY_USERNAME/PASSWORD, else ECR's token for ECR hosts, else anonymous; "
                "`ecr`: always the token ECR hands out (for registries fronted by ECR's auth)."})
    image_repository: str = field(default="ml/{name}", metadata={
        "help": "Repository of a model's image in the registry; `{name}` is the model's name."})
    # AWS
    region: Optional[str] = field(default=None, metadata={"help": "AWS region."})
    endpoint_url: Optional[str] = field(default=None, metadata={
        "help": "AWS API endpoint (a local AWS emulator); boto3 also reads AWS_ENDPOINT_URL."})
    cluster: Optional[str] = field(default=None, metadata={
        "help": "ECS cluster for `fargate` and `ecs` models (created if missing)."})
    capacity_provider: Optional[str] = field(default=None, metadata={
        "help": "ECS capacity provider (an Auto Scaling group of container instances, managed scaling on) "
                "that places `ecs` models without GPUs; attached to `cluster` if it is not."})
    gpu_capacity_provider: Optional[str] = field(default=None, metadata={
        "help": "ECS capacity provider of GPU instances for `ecs` models that set `gpu`. With managed "
                "scaling a rollout gets a second GPU instance for the new task; without, the old task "
                "stops before the new one starts (a gap in service)."})
    subnets: Tuple[str, ...] = field(default=(), metadata={
        "help": "VPC subnet ids for ECS tasks and EC2 instances."})
    security_groups: Tuple[str, ...] = field(default=(), metadata={
        "help": "Security group ids for ECS tasks and EC2 instances."})
    vpc: Optional[str] = field(default=None, metadata={"help": "VPC id of the load balancer's target groups."})
    listener: Optional[str] = field(default=None, metadata={
        "help": "ARN of the ALB listener serving *.ml.<domain>; each model version gets a rule on it."})
    hosted_zone: Optional[str] = field(default=None, metadata={
        "help": "Route 53 hosted zone id of `domain`. Set, a deploy checks that <model>.ml.<domain> "
                "points at the listener's load balancer (the wildcard *.ml.<domain> record infra/ makes, "
                "or the model's own) and creates the model's own alias record if neither exists."})
    execution_role: Optional[str] = field(default=None, metadata={
        "help": "ECS task execution role ARN (pulls the image, writes logs)."})
    task_role: Optional[str] = field(default=None, metadata={"help": "ECS task role ARN (optional)."})
    lambda_role: Optional[str] = field(default=None, metadata={"help": "Lambda execution role ARN."})
    function_url_auth: str = field(default="AWS_IAM", metadata={
        "help": "Function URL auth of Lambda models: AWS_IAM (default) or NONE."})
    function_url_invoke_mode: str = field(default="BUFFERED", metadata={
        "help": "Function URL invoke mode of Lambda models: BUFFERED (default: a response of at "
                "most 6 MB, sent once complete) or RESPONSE_STREAM (streamed endpoints reach the "
                "client as they are made; Function URLs only, not API Gateway)."})
    log_retention_days: int = field(default=30, metadata={"help": "CloudWatch Logs retention."})
    rollout_timeout: int = field(default=1800, metadata={
        "help": "Seconds a deploy waits for the rollout it started (ECS: the new deployment COMPLETED; "
                "EC2: the new instance healthy; Lambda: the function and version Active) before it "
                "fails, saying what still serves. Multi-GB images take minutes to pull."})
    poll_seconds: float = field(default=5.0, metadata={
        "help": "How often a deploy asks AWS how its rollout is doing while it waits."})
    instance_type: str = field(default="t3.medium", metadata={"help": "EC2 instance type for `ec2` models."})
    gpu_instance_type: str = field(default="g5.xlarge", metadata={
        "help": "EC2 instance type for `ec2` models that set `gpu`."})
    ami: Optional[str] = field(default=None, metadata={
        "help": "AMI of `ec2` instances (needs a container engine; user data installs podman if absent)."})
    instance_profile: Optional[str] = field(default=None, metadata={
        "help": "Instance profile ARN of `ec2` instances (ECR pull rights)."})
    # local
    gateway_port: int = field(default=8480, metadata={
        "help": "Port of the local gateway: http://<model>.ml.localhost:<port>/v<version>/..."})
    state_dir: Optional[str] = field(default=None, metadata={
        "help": "Where local deploys keep releases, logs and the route table "
                "(default: $XDG_STATE_HOME/ml-platform/<environment>)."})
    secrets: Mapping[str, str] = field(default_factory=dict, metadata={
        "help": "Where each model secret (an ml_model's `secrets`) comes from, by name: "
                "`secretsmanager:<name or ARN>` or `ssm:<parameter name or ARN>` on AWS compute (read "
                "with the task's or function's role), `env:<VAR>` (the deploy's environment) or "
                "`file:<path>` (an uncommitted file; `~` allowed) on `local`. Values never appear in "
                "images, plans or logs."})
    engine: str = field(default="auto", metadata={
        "help": "How `local` runs models: `auto` (a Docker-API engine if one answers, else the "
                "packaged server), `docker` (require an engine) or `process` (never an engine)."})

    def require(self, *keys: str, why: str) -> None:
        missing = [k for k in keys if getattr(self, k) in (None, "", ())]
        if missing:
            raise ConfigError(
                f"environment {self.name!r}: {why} needs {', '.join(missing)} in the deploy "
                f"environments file (platform/deploy.yaml)")

    @property
    def model_url(self) -> str:
        """Where models answer, `{model}` standing for a model's host label: the local gateway,
        or the load balancer's HTTPS listener."""
        if self.compute == Compute.LOCAL.value:
            return f"http://{{model}}.ml.{self.domain}:{self.gateway_port}"
        return f"https://{{model}}.ml.{self.domain}"

    def local_state_dir(self) -> Path:
        if self.state_dir:
            return Path(os.path.expanduser(self.state_dir))
        base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        return Path(base) / "ml-platform" / self.name


_FIELDS = {f.name: f for f in dataclasses.fields(Environment) if f.name != "name"}
_CHOICES = {
    "compute": COMPUTE_TYPES,
    "registry_auth": ("auto", "ecr"),
    "function_url_auth": ("AWS_IAM", "NONE"),
    "function_url_invoke_mode": ("BUFFERED", "RESPONSE_STREAM"),
    "engine": ("auto", "docker", "process"),
}


def describe() -> str:
    return "\n".join(f"  {name}: {f.metadata['help']}" for name, f in _FIELDS.items())


def _expand(value: str, where: str, env: Mapping[str, str]) -> str:
    def substitute(match: "re.Match[str]") -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: ${{{name}}} is not set (set it, or write ${{{name}:-default}})")

    return _VAR.sub(substitute, value)


def _coerce(name: str, raw: Any, where: str, env: Mapping[str, str]) -> Any:
    f = _FIELDS[name]
    kind = f.type if isinstance(f.type, str) else str(f.type)
    if raw is None:
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if "Mapping" in kind:
        if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
            raise ConfigError(f"{where}: expected a mapping of names to strings, got {raw!r}")
        return {k: _expand(v, f"{where}.{k}", env) for k, v in raw.items()}
    if "Tuple" in kind:
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{where}: expected a list of strings, got {raw!r}")
        return tuple(_expand(i, where, env) for i in items)
    if kind in ("int", "float"):
        value = _expand(raw, where, env) if isinstance(raw, str) else raw
        try:
            number = int(value) if kind == "int" else float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a {'whole ' if kind == 'int' else ''}number, got {raw!r}") from None
        if number < 0:
            raise ConfigError(f"{where}: expected a number of at least 0, got {raw!r}")
        return number
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise ConfigError(f"{where}: expected a string, got {raw!r}")
    value = _expand(str(raw), where, env)
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(_CHOICES[name])}")
    return value


def parse(data: Any, environment: str, source: str = "platform/deploy.yaml",
          env: Optional[Mapping[str, str]] = None) -> Environment:
    env = os.environ if env is None else env
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source}: expected one mapping per environment (dev:, prod:, ...)")
    if environment not in data:
        raise ConfigError(f"{source} has no environment {environment!r}; it has: "
                          f"{', '.join(sorted(map(str, data)))} (choose one with --deploy-env)")
    section = data[environment] or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: environment {environment!r} must be a mapping of settings")
    values: Dict[str, Any] = {}
    for key, raw in section.items():
        where = f"{source}: {environment}.{key}"
        if key not in _FIELDS:
            raise ConfigError(f"{where}: unknown setting; the settings are:\n{describe()}")
        values[key] = _coerce(key, raw, where, env)
    return Environment(name=environment, **values)


def load(path: Path, environment: str, env: Optional[Mapping[str, str]] = None) -> Environment:
    import yaml  # the tools' resolve; only the deploy tools read YAML

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read the deploy environments file {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    return parse(data, environment, str(path), env)
