"""Model secrets: a model names the secrets it needs (its `secrets` setting); the deploy
environment says where each comes from (`secrets:` in platform/deploy.yaml).

    local:                                  dev:
      secrets:                                secrets:
        SUPPORT_REPLY_API_KEY: env:LLM_KEY      SUPPORT_REPLY_API_KEY: secretsmanager:ml/llm-key

A value is read as late as possible and by whoever runs the model: on `local` the deploy reads
it and hands it to the model's process (or container) environment; on ECS the task definition
names the secret (`valueFrom`) and ECS injects it; on Lambda and EC2 the server reads it at
start with the function's or instance's role (ml_serving.secrets), since container-image
functions cannot use the secrets extension. Plans and logs only ever show where a value comes
from (`SecretSource.describe`), never the value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping

from ml_deploy.config import ConfigError, Environment

ENV, FILE, SECRETS_MANAGER, SSM = "env", "file", "secretsmanager", "ssm"
LOCAL_KINDS = (ENV, FILE)
AWS_KINDS = (SECRETS_MANAGER, SSM)


@dataclass(frozen=True)
class SecretSource:
    name: str  # the environment variable the model reads
    kind: str  # one of LOCAL_KINDS or AWS_KINDS
    where: str  # the variable, path, secret id or parameter name

    def describe(self) -> str:
        return f"{self.name} <- {self.kind}:{self.where}"


def sources(secrets: tuple, environment: Environment, model: str, kinds: tuple) -> List[SecretSource]:
    """Where each of a model's secrets comes from in `environment`; ConfigError for a secret the
    environment does not map, or maps to a source the model's compute cannot read."""
    found = []
    for name in secrets:
        reference = environment.secrets.get(name)
        where = f"environment {environment.name!r} (platform/deploy.yaml)"
        if not reference:
            raise ConfigError(f"{model} needs the secret {name}, which {where} does not map: add "
                              f"`secrets: {{{name}: <{'|'.join(k + ':...' for k in kinds)}>}}` to it")
        kind, _, target = reference.partition(":")
        if kind not in kinds or not target:
            raise ConfigError(f"{where} maps the secret {name} of {model} to {reference!r}; on this compute it "
                              f"must be one of: {', '.join(k + ':<...>' for k in kinds)}")
        found.append(SecretSource(name, kind, target))
    return found


def local_values(found: List[SecretSource], environ: Mapping[str, str] = os.environ) -> Dict[str, str]:
    """The values of `env:` and `file:` secrets, for a model run on this machine."""
    values = {}
    for source in found:
        if source.kind == ENV:
            if not environ.get(source.where):
                raise ConfigError(f"secret {source.name}: the environment variable {source.where} is not set "
                                  f"(looked for it in this deploy's environment)")
            values[source.name] = environ[source.where]
        else:
            path = Path(os.path.expanduser(source.where))
            try:
                values[source.name] = path.read_text().rstrip("\n")
            except OSError as e:
                raise ConfigError(f"secret {source.name}: cannot read {path} ({e.strerror})") from None
    return values


def aws_arns(found: List[SecretSource], client: Callable[[str], Any]) -> Dict[str, str]:
    """The ARN of each secret's Secrets Manager secret or SSM parameter, checked to exist (its
    value is never read here: the task or function reads it with its own role)."""
    arns = {}
    for source in found:
        try:
            if source.kind == SECRETS_MANAGER:
                arns[source.name] = client("secretsmanager").describe_secret(SecretId=source.where)["ARN"]
            else:
                name = source.where.rsplit(":parameter", 1)[-1]
                described = client("ssm").describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [name]}])
                if not described["Parameters"]:
                    raise LookupError(f"no parameter {name}")
                arns[source.name] = described["Parameters"][0].get("ARN") or _parameter_arn(client, name)
        except Exception as e:  # botocore's ResourceNotFoundException, AccessDenied, ...
            raise ConfigError(f"secret {source.name}: {source.kind}:{source.where} cannot be found "
                              f"({type(e).__name__}: {e})") from None
    return arns


def _parameter_arn(client: Callable[[str], Any], name: str) -> str:
    """A parameter's ARN, where describe_parameters leaves it out (older APIs, moto)."""
    ssm = client("ssm")
    account = client("sts").get_caller_identity()["Account"]
    return f"arn:aws:ssm:{ssm.meta.region_name}:{account}:parameter/{name.lstrip('/')}"
