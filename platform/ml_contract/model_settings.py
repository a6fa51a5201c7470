"""A model's deploy settings, their defaults, and the rules each compute imposes on them.

The plugin's `ml_model` fields take their defaults and help from here and check a target with
`ModelSettings.check`; `pants deploy` hands the settings to the deploy tools as JSON
(`to_json` / `from_json`), which check them again for the compute an environment may force.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, Mapping, Optional, Tuple


class Compute(Enum):
    LOCAL = "local"
    LAMBDA = "lambda"
    FARGATE = "fargate"
    ECS = "ecs"
    EC2 = "ec2"


# What each compute is, for help texts; one entry per Compute (a test checks).
COMPUTE_HELP: Dict[Compute, str] = {
    Compute.LOCAL: "a container or process on this machine",
    Compute.LAMBDA: "AWS Lambda, container image",
    Compute.FARGATE: "ECS on Fargate",
    Compute.ECS: "ECS on EC2 capacity, the one that offers GPUs",
    Compute.EC2: "a plain EC2 instance",
}
GPU_COMPUTES = frozenset({Compute.LOCAL, Compute.ECS, Compute.EC2})

# Lambda's documented limits.
LAMBDA_MEMORY_RANGE_MIB = (128, 10240)
LAMBDA_MAX_TIMEOUT_SECONDS = 900
LAMBDA_MAX_PAYLOAD_BYTES = 6 * 2**20  # a synchronous invocation's request, and its response
LAMBDA_ENV_LIMIT_BYTES = 4096  # a function's environment variables together, names and values
# What a function's environment holds besides the model's `env`: the platform's own variables
# (where models answer, streaming mode, where secrets are), kept free at BUILD time.
LAMBDA_PLATFORM_ENV_BYTES = 1024
# Lambda gives an execution environment's init (the model's load) this long; a longer one is
# retried within the first request, under the function's timeout.
LAMBDA_INIT_LIMIT_SECONDS = 10
# Names Lambda sets itself and refuses in a function's environment.
LAMBDA_RESERVED_ENV = (
    "_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR",
)

# Fargate task sizes: vCPU -> allowed memory (MiB). Fargate rejects every other pair.
FARGATE_TASK_SIZES: Dict[float, Tuple[int, ...]] = {
    0.25: (512, 1024, 2048),
    0.5: tuple(range(1024, 4096 + 1, 1024)),
    1: tuple(range(2048, 8192 + 1, 1024)),
    2: tuple(range(4096, 16384 + 1, 1024)),
    4: tuple(range(8192, 30720 + 1, 1024)),
    8: tuple(range(16384, 61440 + 1, 4096)),
    16: tuple(range(32768, 122880 + 1, 8192)),
}

# What a model gets for a setting it leaves unset; each is valid on every compute.
DEFAULT_VERSION = 1
DEFAULT_COMPUTE = Compute.LOCAL
DEFAULT_CPU = 0.5
DEFAULT_MEMORY_MIB = 1024
DEFAULT_GPU = 0
DEFAULT_TIMEOUT_SECONDS = 60
DEFAULT_LOAD_TIMEOUT_SECONDS = 180
# Lambda allots CPU in proportion to memory: one vCPU per this many MiB (AWS's documented figure).
LAMBDA_MIB_PER_VCPU = 1769

# The math libraries a worker's thread count is handed to, through their environment variables
# (torch's intra-op pool reads OMP_NUM_THREADS): one count, so that workers never oversubscribe.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS")


# A secret is an environment variable of the model's process: a name a shell could export. The
# platform's own (ML_*) and Lambda's (AWS_*, LAMBDA_*) are not the model's to take.
SECRET_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
RESERVED_ENV_PREFIXES = ("ML_", "AWS_", "LAMBDA_")


def env_bytes(env: Mapping[str, str]) -> int:
    """What environment variables count against Lambda's limit: their names and values, in UTF-8."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in env.items())


# Where replicas and their autoscaling apply (Application Auto Scaling on an ECS service).
REPLICATED_COMPUTES = (Compute.FARGATE, Compute.ECS)


class SettingError(ValueError):
    """One setting is invalid for the model's compute; `setting` names it."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"`{setting}` {message}")
        self.setting = setting
        self.message = message


def describe_memory_choices(memories: Tuple[int, ...]) -> str:
    if len(memories) <= 3:
        return ", ".join(str(m) for m in memories)
    step = memories[1] - memories[0]
    return f"{memories[0]}-{memories[-1]} in steps of {step}"


def computes_help() -> str:
    return ", ".join(f"`{c.value}` ({COMPUTE_HELP[c]})" for c in Compute)


@dataclass(frozen=True)
class ModelSettings:
    """How one model version runs: what its `ml_model` target says, defaults filled in by
    `effective_*`. The field names are the `ml_model` field names."""

    name: str
    address: str = ""
    version: int = DEFAULT_VERSION
    compute: str = DEFAULT_COMPUTE.value
    cpu: Optional[float] = None  # vCPUs; None: DEFAULT_CPU (and on Lambda: whatever memory brings)
    memory: Optional[int] = None  # MiB; None: DEFAULT_MEMORY_MIB
    gpu: int = DEFAULT_GPU
    timeout: int = DEFAULT_TIMEOUT_SECONDS  # seconds per request
    load_timeout: Optional[int] = None  # seconds from start until ready; None: effective_load_timeout
    env: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    workers: Optional[int] = None  # model worker processes; None: from cpu and gpu
    threads: Optional[int] = None  # math-library threads per worker; None: from cpu and workers
    worker_memory: Optional[int] = None  # MiB one loaded worker needs; checked against memory
    secrets: Tuple[str, ...] = ()  # environment variables each deploy environment supplies
    # Scaling (SCALING_HELP): replicas on fargate/ecs, concurrency on lambda.
    min_replicas: int = 1
    max_replicas: Optional[int] = None  # None: min_replicas (no autoscaling)
    target_requests: Optional[int] = None  # requests per replica per minute autoscaling keeps
    target_cpu: Optional[int] = None  # average CPU percent autoscaling keeps
    reserved_concurrency: Optional[int] = None
    provisioned_concurrency: Optional[int] = None

    @property
    def effective_max_replicas(self) -> int:
        return self.min_replicas if self.max_replicas is None else self.max_replicas

    @property
    def effective_cpu(self) -> float:
        return DEFAULT_CPU if self.cpu is None else float(self.cpu)

    @property
    def effective_load_timeout(self) -> int:
        """On Lambda a cold start loads within the first request (past init's 10 s): its timeout."""
        if self.load_timeout is not None:
            return self.load_timeout
        if Compute(self.compute) == Compute.LAMBDA:
            return self.timeout
        return DEFAULT_LOAD_TIMEOUT_SECONDS

    @property
    def effective_memory(self) -> int:
        return DEFAULT_MEMORY_MIB if self.memory is None else int(self.memory)

    @property
    def cores(self) -> int:
        """Whole vCPUs the model may keep busy (at least one)."""
        if Compute(self.compute) == Compute.LAMBDA:
            return max(1, self.effective_memory // LAMBDA_MIB_PER_VCPU)
        return max(1, int(self.effective_cpu))

    @property
    def effective_workers(self) -> int:
        """Never the host's core count: on ECS on EC2 that is the instance's, not the task's."""
        if self.workers:
            return self.workers
        if Compute(self.compute) == Compute.LAMBDA:
            return 1  # Lambda sends one invocation at a time: more workers only cost memory
        if self.gpu:
            return self.gpu  # one per GPU
        return max(1, self.cores // (self.threads or 1))

    @property
    def effective_threads(self) -> int:
        return self.threads or max(1, self.cores // self.effective_workers)

    def check(self) -> None:
        """Raise SettingError for the first setting the compute does not allow."""
        try:
            compute = Compute(self.compute)
        except ValueError:
            raise SettingError("compute", f"is {self.compute!r}; it must be one of "
                               f"{', '.join(c.value for c in Compute)}.") from None
        if self.gpu and compute not in GPU_COMPUTES:
            raise SettingError("gpu", f"is {self.gpu}, but {compute.value} has no GPUs. Use compute='ecs' or "
                               "'ec2' for GPU models, or remove `gpu`.")
        if compute == Compute.LAMBDA:
            if self.cpu is not None:
                raise SettingError("cpu", "cannot be set: Lambda allots CPU in proportion to `memory`. "
                                   "Remove `cpu`.")
            low, high = LAMBDA_MEMORY_RANGE_MIB
            if self.memory is not None and not low <= self.memory <= high:
                raise SettingError("memory", f"is {self.memory} MiB, but Lambda allows {low}-{high} MiB.")
            if self.timeout > LAMBDA_MAX_TIMEOUT_SECONDS:
                raise SettingError("timeout", f"is {self.timeout} s, but Lambda allows at most "
                                   f"{LAMBDA_MAX_TIMEOUT_SECONDS} s.")
            if self.load_timeout is not None and self.load_timeout > max(self.timeout, LAMBDA_INIT_LIMIT_SECONDS):
                raise SettingError("load_timeout", f"is {self.load_timeout} s, but Lambda gives a cold start "
                                   f"{LAMBDA_INIT_LIMIT_SECONDS} s to load, then retries the load within the first "
                                   f"request's `timeout` ({self.timeout} s): a load that long never finishes. Raise "
                                   f"`timeout` to at least {self.load_timeout}, or deploy to fargate, ecs or ec2.")
            reserved = sorted(set(self.env) & set(LAMBDA_RESERVED_ENV))
            if reserved:
                raise SettingError("env", f"sets {', '.join(reserved)}, which Lambda sets itself and refuses in a "
                                   "function's environment. Rename them.")
            size = env_bytes(self.env)
            if size > LAMBDA_ENV_LIMIT_BYTES - LAMBDA_PLATFORM_ENV_BYTES:
                raise SettingError("env", f"holds {size:,} bytes of names and values, but Lambda allows "
                                   f"{LAMBDA_ENV_LIMIT_BYTES:,} for a function's whole environment and the platform "
                                   f"keeps {LAMBDA_PLATFORM_ENV_BYTES:,} of them. Move big values into the "
                                   "model's files (its artifacts), or into secrets.")
        for secret in self.secrets:
            if not SECRET_NAME.match(secret) or secret.startswith(RESERVED_ENV_PREFIXES):
                raise SettingError("secrets", f"names {secret!r}: a secret is an environment variable, upper-case "
                                   f"letters, digits and _, not starting with {', '.join(RESERVED_ENV_PREFIXES)}.")
            if secret in self.env:
                raise SettingError("secrets", f"names {secret!r}, which `env` sets too: a secret's value comes "
                                   "from the deploy environment, never from the BUILD file. Remove it from `env`.")
        for name in ("workers", "threads", "worker_memory"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SettingError(name, f"is {value}; it must be at least 1 (or unset, to derive it).")
        self._check_scaling(compute)
        if compute == Compute.LAMBDA and self.effective_workers > 1:
            raise SettingError("workers", f"is {self.workers}, but Lambda sends one request at a time to an "
                               "environment: more workers only cost memory. Remove `workers`.")
        busy = self.effective_workers * self.effective_threads
        # Derived counts never oversubscribe the cores (GPU workers mostly wait on their GPU).
        if (self.workers or self.threads) and busy > self.cores:
            raise SettingError("workers" if self.workers else "threads",
                               f"makes {self.effective_workers} worker(s) x {self.effective_threads} thread(s) = "
                               f"{busy} busy cores, but the model has {self.cores} ({self._cores_from()}): they "
                               f"would slow each other down. Lower `workers` or `threads`, or raise `cpu`.")
        if self.worker_memory is not None:
            needed = self.effective_workers * self.worker_memory
            if needed > self.effective_memory:
                raise SettingError("workers" if self.workers else "worker_memory",
                                   f"makes {self.effective_workers} worker(s) x {self.worker_memory} MiB = "
                                   f"{needed} MiB, more than `memory` ({self.effective_memory} MiB). Lower "
                                   f"`workers`, or raise `memory` to at least {needed}.")
        if compute == Compute.FARGATE:
            cpu, memory = self.effective_cpu, self.effective_memory
            allowed = FARGATE_TASK_SIZES.get(cpu)
            if allowed is None:
                choices = ", ".join(f"{c:g}" for c in FARGATE_TASK_SIZES)
                raise SettingError("cpu", f"is {cpu:g} vCPU, which Fargate does not offer. Allowed: {choices}.")
            if memory not in allowed:
                raise SettingError("memory", f"is {memory} MiB, which Fargate does not offer with {cpu:g} vCPU. "
                                   f"Allowed with {cpu:g} vCPU: {describe_memory_choices(allowed)} MiB.")

    def _cores_from(self) -> str:
        if Compute(self.compute) == Compute.LAMBDA:
            return f"Lambda's share for {self.effective_memory} MiB"
        return f"cpu={self.effective_cpu:g}"

    def _check_scaling(self, compute: Compute) -> None:
        replicas = self.min_replicas != 1 or self.max_replicas is not None
        if replicas and compute not in REPLICATED_COMPUTES:
            raise SettingError("min_replicas" if self.min_replicas != 1 else "max_replicas",
                               f"applies to {' and '.join(c.value for c in REPLICATED_COMPUTES)} only, not "
                               f"{compute.value}" + (" (Lambda scales by itself: set reserved_concurrency or "
                                                      "provisioned_concurrency)" if compute == Compute.LAMBDA else "")
                               + ". Remove it.")
        if self.min_replicas < 1:
            raise SettingError("min_replicas", f"is {self.min_replicas}: a service at 0 tasks answers 503 until it "
                               "is scaled out again, which target tracking never does (no requests reach it, so "
                               "there is no metric). For scale to zero use compute='lambda' (its cold start "
                               "pays the model's load); GPU instances of ecs already scale to zero between models.")
        if self.effective_max_replicas < self.min_replicas:
            raise SettingError("max_replicas", f"is {self.max_replicas}, below min_replicas ({self.min_replicas}).")
        targets = [n for n in ("target_requests", "target_cpu") if getattr(self, n) is not None]
        if self.effective_max_replicas > self.min_replicas and len(targets) != 1:
            raise SettingError("max_replicas", "scales between min_replicas and max_replicas on one target: set "
                               "exactly one of `target_requests` (requests per replica per minute) or "
                               "`target_cpu` (percent).")
        if targets and self.effective_max_replicas == self.min_replicas:
            raise SettingError(targets[0], "has nothing to scale: set max_replicas above min_replicas, or remove it.")
        if self.target_cpu is not None and not 1 <= self.target_cpu <= 100:
            raise SettingError("target_cpu", f"is {self.target_cpu}; it is a percentage, 1-100.")
        if self.target_requests is not None and self.target_requests < 1:
            raise SettingError("target_requests", f"is {self.target_requests}; it must be at least 1.")
        for name in ("reserved_concurrency", "provisioned_concurrency"):
            value = getattr(self, name)
            if value is not None and compute != Compute.LAMBDA:
                raise SettingError(name, f"applies to lambda only, not {compute.value}: use min_replicas and "
                                   "max_replicas. Remove it.")
            if value is not None and value < (0 if name == "reserved_concurrency" else 1):
                raise SettingError(name, f"is {value}; it must be at least {0 if name == 'reserved_concurrency' else 1}.")
        if (self.reserved_concurrency is not None and self.provisioned_concurrency is not None
                and self.provisioned_concurrency > self.reserved_concurrency):
            raise SettingError("provisioned_concurrency", f"is {self.provisioned_concurrency}, more than "
                               f"reserved_concurrency ({self.reserved_concurrency}), which caps it.")

    def to_dict(self) -> Dict[str, Any]:
        return {**dataclasses.asdict(self), "env": dict(self.env), "secrets": list(self.secrets)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSettings":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:  # written by another version of the plugin than these tools
            raise ValueError(f"unknown model settings {unknown}; rebuild with the same commit's plugin")
        return cls(**{**data, "secrets": tuple(data.get("secrets", ()))})
