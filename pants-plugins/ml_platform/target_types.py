"""The `ml_model` target: one deployable model, with its own resolve and its own package."""

from __future__ import annotations

import os
import re
from typing import Iterable, Optional, Tuple

from pants.backend.python.subsystems.setup import PythonSetup
from pants.backend.python.target_types import (
    EntryPoint,
    EntryPointField,
    InterpreterConstraintsField,
    PythonResolveField,
)
from pants.core.goals.package import OutputPathField
from pants.engine.addresses import Address
from pants.engine.target import (
    COMMON_TARGET_FIELDS,
    Dependencies,
    DescriptionField,
    DictStringToStringField,
    DictStringToStringSequenceField,
    FloatField,
    IntField,
    InvalidFieldException,
    InvalidTargetException,
    SingleSourceField,
    SpecialCasedDependencies,
    StringField,
    StringSequenceField,
    Target,
    ValidNumbers,
)
from pants.util.strutil import help_text, softwrap

from ml_contract.package_layout import SYSTEM_PACKAGES_LOCK
from ml_contract.runtimes import R, runtime_of

# Debian Policy 5.6.1: at least two characters, starting with a letter or digit.
DEBIAN_PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
# Computes, their limits and the defaults: one table, shared with the deploy tools.
from ml_contract.model_settings import (
    DEFAULT_COMPUTE,
    DEFAULT_CPU,
    DEFAULT_GPU,
    DEFAULT_MEMORY_MIB,
    DEFAULT_LOAD_TIMEOUT_SECONDS,
    DEFAULT_TIMEOUT_SECONDS,
    DEFAULT_VERSION,
    GPU_COMPUTES,
    LAMBDA_ENV_LIMIT_BYTES,
    LAMBDA_INIT_LIMIT_SECONDS,
    LAMBDA_MAX_TIMEOUT_SECONDS,
    LAMBDA_MEMORY_RANGE_MIB,
    LAMBDA_PLATFORM_ENV_BYTES,
    Compute,
    ModelSettings,
    SettingError,
    computes_help,
)


class MLModelEntryPointField(EntryPointField):
    alias = "entry_point"
    required = True
    help = help_text(
        """
        The model's handler class, as `<file>.py:<Class>` relative to this BUILD file's folder
        (e.g. `model.py:Model`), or as `<module>:<Class>` with a full module name; or, for a
        model written in R, its R file, as `<file>.R` (e.g. `src/model.R`).

        A Python class is instantiated once per worker; its optional `load()` method is called
        once, with the model's artifacts available, and its `predict()` method answers requests.
        The file's `python_sources` target is added to the model's dependencies automatically.
        An R file defines `endpoints` (and may define `load_model(model_dir)`), as
        platform/ml_runtime/r/README.md describes; a `resources` target must own it, and R and
        jsonlite come from Debian through `system_packages`, to which they are added.
        """
    )

    @classmethod
    def compute_value(cls, raw_value: Optional[str], address: Address) -> EntryPoint:
        if raw_value is not None and runtime_of(raw_value.split(":", 1)[0]) == R:
            if ":" in raw_value:
                raise InvalidFieldException(
                    f"The `{cls.alias}` field in target {address} names an R file, which has no "
                    f"class: write it as `src/model.R`, without `:...`; it was {raw_value!r}."
                )
            return EntryPoint(os.path.normpath(os.path.join(address.spec_path, raw_value)))
        value = super().compute_value(raw_value, address)
        assert value is not None  # required = True
        if not value.function or "." in value.function:
            raise InvalidFieldException(
                softwrap(
                    f"""
                    The `{cls.alias}` field in target {address} must name a class, as
                    `model.py:Model` (a file in this BUILD file's folder and a class in it) or
                    `package.module:Model`, but it was {raw_value!r}.
                    """
                )
            )
        return value


class MLModelArtifactsScriptField(EntryPointField):
    alias = "artifacts_script"
    required = False
    help = help_text(
        """
        A script that writes artifacts too big for git at build time, as `<file>.py` relative
        to this BUILD file's folder (e.g. `src/weights.py`), in the model's resolve.

        `pants package` runs it as a cached process in the model's own locked environment,
        with an empty directory as its first argument, then the paths of the files that the
        `file` targets among this model's `dependencies` bring (a `file` with an `http_source`
        pins big inputs, e.g. weights, by sha256; Pants fetches it once and caches it). What it
        writes into that directory is packaged as if it were
        committed next to the entry point's module (so `artifacts/x.pt` is found at
        `Path(__file__).parent / "artifacts" / "x.pt"`), in an image layer of its own before the
        code's: a code change neither re-runs it nor re-pushes its output. It must be
        deterministic (seed it; it runs with no GPU visible), so a clone rebuilds the image bit
        for bit.
        """
    )


class MLModelResolveField(PythonResolveField):
    alias = "resolve"
    help = help_text(
        """
        The model's own resolve in `[python].resolves` (its lockfile). Every model has one, so
        no model forces a dependency version on another.

        Defaults to the name of the model's folder: `models/iris:iris` uses the resolve `iris`.
        The model's `python_sources` and `python_requirements` must use the same resolve.
        """
    )

    @classmethod
    def compute_value(cls, raw_value: Optional[str], address: Address) -> str:
        value = super().compute_value(raw_value, address)
        return value or os.path.basename(address.spec_path) or address.target_name

    def normalized_value(self, python_setup: PythonSetup) -> str:
        # Pants' own error lists the known resolves; a model author needs the line to add.
        if python_setup.enable_resolves and self.value not in python_setup.resolves:
            lockfile = os.path.join(self.address.spec_path, f"{self.value}.lock")
            raise InvalidFieldException(
                softwrap(
                    f"""
                    The ml_model target {self.address} uses the resolve {self.value!r} (its
                    `{self.alias}` field, which defaults to the model's folder name), but
                    pants.toml does not declare it. Add this line under [python.resolves] in
                    pants.toml:

                        {self.value} = "{lockfile}"

                    then run `./pants generate-lockfiles --resolve={self.value}`.
                    """
                )
            )
        return super().normalized_value(python_setup)


class MLModelVersionField(IntField):
    alias = "version"
    default = DEFAULT_VERSION
    help = help_text(
        """
        The model's API version, an integer >= 1: it appears in the model's URLs as
        `/v<version>/...` and in the Open Inference Protocol routes. Bump it for a breaking
        change to the model's inputs or outputs; several versions can be live at once.
        """
    )

    valid_numbers = ValidNumbers.positive_only


class MLModelComputeField(StringField):
    alias = "compute"
    default = DEFAULT_COMPUTE.value
    valid_choices = Compute
    help = help_text(f"Where the model runs when deployed: {computes_help()}.")


class MLModelCpuField(FloatField):
    alias = "cpu"
    default = None
    help = help_text(
        f"""
        vCPUs reserved for the model (e.g. `0.25`, `1`, `4`). Defaults to {DEFAULT_CPU}. On
        `fargate` it must form a Fargate task size with `memory`; on `lambda` it cannot be set
        (Lambda allots CPU in proportion to memory).
        """
    )

    valid_numbers = ValidNumbers.positive_only

    @classmethod
    def compute_value(cls, raw_value: Optional[float], address: Address) -> Optional[float]:
        # `cpu=1` is as natural as `cpu=0.5`; FloatField alone would reject the int.
        if isinstance(raw_value, int) and not isinstance(raw_value, bool):
            raw_value = float(raw_value)
        return super().compute_value(raw_value, address)


class MLModelMemoryField(IntField):
    alias = "memory"
    default = None
    help = help_text(
        f"""
        Memory for the model in MiB. Defaults to {DEFAULT_MEMORY_MIB}. On `lambda` it must be
        within {LAMBDA_MEMORY_RANGE_MIB[0]}-{LAMBDA_MEMORY_RANGE_MIB[1]}; on `fargate` it must
        form a Fargate task size with `cpu`.
        """
    )

    valid_numbers = ValidNumbers.positive_only


class MLModelGpuField(IntField):
    alias = "gpu"
    default = DEFAULT_GPU
    help = help_text(
        f"""
        Number of GPUs the model needs. Only {", ".join(f"`{c.value}`" for c in Compute if c in GPU_COMPUTES)}
        can provide GPUs; the other computes have none.
        """
    )

    valid_numbers = ValidNumbers.positive_and_zero


class MLModelWorkersField(IntField):
    alias = "workers"
    default = None
    help = help_text(
        """
        Model worker processes, each holding its own copy of the model. Defaults to one per GPU
        when `gpu` is set, else one per whole vCPU of `cpu` divided by `threads` (one on
        `lambda`): never the host's core count, which on ECS on EC2 is the instance's. Fewer
        workers with more `threads` each suit big models (one copy of a 1 GB model per core may
        not fit `memory`).
        """
    )

    valid_numbers = ValidNumbers.positive_only


class MLModelMinReplicasField(IntField):
    alias = "min_replicas"
    default = 1
    help = help_text(
        """
        Tasks that always run, on `fargate` and `ecs` (each behind the load balancer); also
        how many a new service starts with. At least 1: an ECS service at 0 tasks answers 503
        until scaled out, which target tracking never does. For scale to zero use `lambda`
        (a cold start then pays the model's load, `load_timeout`); GPU instances of `ecs` scale
        to zero between models by themselves.
        """
    )


class MLModelMaxReplicasField(IntField):
    alias = "max_replicas"
    default = None
    help = help_text(
        """
        Most tasks autoscaling may run, on `fargate` and `ecs` (Application Auto Scaling, target
        tracking on `target_requests` or `target_cpu`). Defaults to `min_replicas`: no
        autoscaling. A GPU task each needs a GPU instance, which the GPU capacity provider starts
        (minutes).
        """
    )


class MLModelTargetRequestsField(IntField):
    alias = "target_requests"
    default = None
    help = help_text(
        """
        Requests per replica per minute that autoscaling keeps (the load balancer's
        RequestCountPerTarget): set one of this or `target_cpu` when `max_replicas` is above
        `min_replicas`. Measure a replica's rate at an acceptable latency (bench/serving.py) and
        take a margin below it.
        """
    )
    valid_numbers = ValidNumbers.positive_only


class MLModelTargetCpuField(IntField):
    alias = "target_cpu"
    default = None
    help = help_text(
        """
        Average CPU percent of the service's tasks that autoscaling keeps (1-100); for models
        whose load is CPU-bound. The alternative to `target_requests`.
        """
    )
    valid_numbers = ValidNumbers.positive_only


class MLModelReservedConcurrencyField(IntField):
    alias = "reserved_concurrency"
    default = None
    help = help_text(
        """
        On `lambda`: the most execution environments the function may run at once, reserved for
        it out of the account's concurrency (0 stops it). Unset: the account's shared pool. It
        caps the model's cost and protects what it calls.
        """
    )


class MLModelProvisionedConcurrencyField(IntField):
    alias = "provisioned_concurrency"
    default = None
    help = help_text(
        """
        On `lambda`: execution environments kept initialised on alias `live` (the model loaded),
        so that this many concurrent requests never meet a cold start; they are paid for while
        idle. Unset: none, so the function scales to zero and a request after a quiet spell
        pays the cold start (the image's start and the model's load).
        """
    )
    valid_numbers = ValidNumbers.positive_only


class MLModelThreadsField(IntField):
    alias = "threads"
    default = None
    help = help_text(
        """
        Threads each worker's math libraries use (OpenMP, MKL, OpenBLAS, torch: set through
        OMP_NUM_THREADS and the like). Defaults to the whole vCPUs of `cpu` shared out among
        `workers`, so that workers x threads never oversubscribes the cores; a setting that
        does is refused.
        """
    )

    valid_numbers = ValidNumbers.positive_only


class MLModelWorkerMemoryField(IntField):
    alias = "worker_memory"
    default = None
    help = help_text(
        """
        MiB one worker needs once the model is loaded (measure it: the server logs each worker's
        pid). When set, `workers` x `worker_memory` must fit in `memory`, or the target is
        refused with the numbers.
        """
    )

    valid_numbers = ValidNumbers.positive_only


class MLModelTimeoutField(IntField):
    alias = "timeout"
    default = DEFAULT_TIMEOUT_SECONDS
    help = help_text(
        f"""
        Seconds one request may take before it is answered with a timeout error. On `lambda` it
        is also the function timeout, at most {LAMBDA_MAX_TIMEOUT_SECONDS}.
        """
    )

    valid_numbers = ValidNumbers.positive_only


class MLModelLoadTimeoutField(IntField):
    alias = "load_timeout"
    default = None
    help = help_text(
        f"""
        Seconds a new replica may take from its start until it is ready (its workers have
        loaded the model), on a busy host: the image's pull does not count. Defaults to
        {DEFAULT_LOAD_TIMEOUT_SECONDS}; on `lambda` to the model's `timeout`. Deploys wait this
        long for it (`local`), and on `ecs` and `fargate` it is the service's health-check grace
        period, during which failed load-balancer checks do not stop the task. Raise it for a
        model with big weights or a slow first import, e.g. the CUDA build of torch. On
        `lambda` it is at most `timeout`: Lambda gives a cold start
        {LAMBDA_INIT_LIMIT_SECONDS} s to load, then retries the load within the first
        request.
        """
    )

    valid_numbers = ValidNumbers.positive_only


class MLModelEnvField(DictStringToStringField):
    alias = "env"
    help = help_text(
        f"""
        Environment variables set for the model's process, e.g.
        `env={{"OMP_NUM_THREADS": "1"}}`. Never put secrets here: BUILD files live in git. On
        `lambda` Lambda's own names (AWS_REGION, _HANDLER, ...) are refused, and names and
        values together must stay under {LAMBDA_ENV_LIMIT_BYTES - LAMBDA_PLATFORM_ENV_BYTES:,}
        bytes (Lambda's {LAMBDA_ENV_LIMIT_BYTES:,}, less what the platform sets).
        """
    )


class MLModelSecretsField(StringSequenceField):
    alias = "secrets"
    help = help_text(
        """
        Names of the secrets the model needs, e.g. `secrets=["SUPPORT_REPLY_API_KEY"]`: each is
        an environment variable of the model's process whose value the deploy environment
        supplies (`secrets:` in platform/deploy.yaml maps each name to AWS Secrets Manager, SSM
        Parameter Store, an environment variable or an uncommitted file). A value never enters
        the image, the lockfile, the deploy plan, a log or the metrics; a deploy that cannot find
        one fails naming it and where it looked.
        """
    )


class MLModelSystemPackagesField(StringSequenceField):
    alias = "system_packages"
    help = help_text(
        f"""
        Debian packages the model needs beyond the base image (e.g. `["libgl1"]` for OpenCV,
        `["ffmpeg"]`, `["r-cran-randomforest"]`), installed in a layer of their own between the
        base and the server. They are locked with their dependency closure (no Recommends), by
        sha256, in `{SYSTEM_PACKAGES_LOCK}` beside this BUILD file; `pants package` says how to
        (re)generate it when it is missing or stale. Nothing is installed with apt or dpkg and no
        maintainer script runs: what a package's scripts must do is done by the image builder or
        the package is refused (platform/ml_image/maintainer_scripts.py). Needs the embedded base.
        """
    )

    @classmethod
    def compute_value(cls, raw_value: Optional[Iterable[str]], address: Address) -> Optional[Tuple[str, ...]]:
        value = super().compute_value(raw_value, address)
        for name in value or ():
            if not DEBIAN_PACKAGE_NAME.fullmatch(name):
                raise InvalidFieldException(
                    f"The `{cls.alias}` field in target {address} holds {name!r}, which is not a "
                    "Debian package name (lower-case letters, digits, `+`, `-` and `.`; no version: "
                    f"the lock pins it)."
                )
        return value


class MLModelArtifactsField(StringSequenceField):
    alias = "artifacts"
    help = help_text(
        """
        Globs of the files shipped with the model besides its code (weights, pickles, prompts),
        relative to this folder and inside the entry point's folder: `["src/artifacts/*"]`.
        They are packaged next to the code: `Path(__file__).parent / "artifacts" / "x.joblib"`
        finds them. (The target `<code folder>:artifacts`, made from this field.)
        """
    )


class MLModelTrainField(StringField):
    alias = "train"
    help = help_text(
        """
        The model's training script, `src/train.py` or `src/train.R`, never shipped: `./pants
        run models/<name>/src/train.py` runs it where it lies (not in a sandbox) with the
        model's own locked requirements (R: this machine's `Rscript`), so what it writes next to
        itself (the artifacts) lands in the model's folder. (The target `<code folder>:train`.)
        """
    )


class MLModelDataField(StringSequenceField):
    alias = "data"
    help = help_text(
        """
        Globs of files for training and tests, never shipped (held-out examples, a training
        set), relative to this folder and inside the entry point's folder:
        `["src/examples.json", "src/data/*.csv"]`. Tests depend on `<code folder>:data`.
        """
    )


class MLModelModuleMappingField(DictStringToStringSequenceField):
    alias = "module_mapping"
    help = help_text(
        """
        Of the model's `python_requirements`: the modules of a distribution whose modules have
        another name than itself, for dependency inference: `{"xgboost-cpu": ["xgboost"]}`.
        """
    )


class MLModelDependenciesField(Dependencies):
    help = help_text(
        """
        Addresses of what the model needs beyond its entry point's file, which is added
        automatically: artifacts (`resources` targets), shared code, extra requirements.
        Everything must be in the model's resolve (or, for shared code, parametrized over it).
        """
    )


class MLModelServerField(SpecialCasedDependencies):
    alias = "server"
    default = ("//platform:server",)
    help = help_text(
        """
        The `pex_binary` of the model server (HTTP, Open Inference Protocol, Lambda) that the
        model is served by. It runs from its own locked environment, never the model's, so its
        dependencies cannot collide with the model's. Leave the default unless you are testing
        another server.
        """
    )


class MLModelBaseImageField(StringField):
    alias = "base_image"
    default = None
    help = help_text(
        """
        The base image of the model's image: `embedded` (Debian bookworm + Python 3.11 built
        from the pinned packages in `[ml-platform].base_lock`, no registry needed) or a registry
        reference pinned by digest, `registry/repository:tag@sha256:...`, pulled without a
        daemon (credentials: ML_REGISTRY_USERNAME/PASSWORD, or boto3 for ECR). Its Python must
        satisfy the model's interpreter constraints. Defaults to `[ml-platform].base_image`.
        """
    )

    @classmethod
    def compute_value(cls, raw_value: Optional[str], address: Address) -> Optional[str]:
        value = super().compute_value(raw_value, address)
        if value not in (None, "embedded") and "@sha256:" not in value:
            raise InvalidFieldException(
                f"The `{cls.alias}` field in target {address} must be `embedded` or a reference "
                f"pinned by digest (`registry/repository:tag@sha256:<hex>`), so builds are "
                f"reproducible; got {value!r}."
            )
        return value


class MLModelOutputPathField(OutputPathField):
    help = help_text(
        """
        Where the model's package is written, relative to `dist/`: a directory holding the
        model's PEX (`model.pex/`, the worker side) and the server (`server.pex`). Defaults to
        the folder path with dots, then the target name (e.g. `models.iris/iris`).
        """
    )


class MLModelTarget(Target):
    alias = "ml_model"
    core_fields = (
        *COMMON_TARGET_FIELDS,
        MLModelEntryPointField,
        MLModelArtifactsScriptField,
        MLModelResolveField,
        MLModelVersionField,
        MLModelComputeField,
        MLModelCpuField,
        MLModelMemoryField,
        MLModelGpuField,
        MLModelWorkersField,
        MLModelMinReplicasField,
        MLModelMaxReplicasField,
        MLModelTargetRequestsField,
        MLModelTargetCpuField,
        MLModelReservedConcurrencyField,
        MLModelProvisionedConcurrencyField,
        MLModelThreadsField,
        MLModelWorkerMemoryField,
        MLModelLoadTimeoutField,
        MLModelTimeoutField,
        MLModelEnvField,
        MLModelSecretsField,
        MLModelSystemPackagesField,
        MLModelArtifactsField,
        MLModelTrainField,
        MLModelDataField,
        MLModelModuleMappingField,
        MLModelDependenciesField,
        MLModelServerField,
        MLModelBaseImageField,
        InterpreterConstraintsField,
        MLModelOutputPathField,
    )
    help = help_text(
        """
        A machine-learning model served behind a generated REST API.

        The model is a folder with its code, artifacts and requirements. It has its own resolve
        (lockfile) and is packaged with exactly those dependencies: `pants package` builds it,
        `pants deploy` ships it to its declared `compute`.
        """
    )

    def settings(self) -> ModelSettings:
        """The target's deploy settings, as the deploy tools read them."""
        return ModelSettings(
            name=self.address.target_name,
            address=self.address.spec,
            version=self[MLModelVersionField].value,
            compute=self[MLModelComputeField].value,
            cpu=self[MLModelCpuField].value,
            memory=self[MLModelMemoryField].value,
            gpu=self[MLModelGpuField].value,
            timeout=self[MLModelTimeoutField].value,
            load_timeout=self[MLModelLoadTimeoutField].value,
            env=dict(self[MLModelEnvField].value or {}),
            description=self[DescriptionField].value or "",
            workers=self[MLModelWorkersField].value,
            threads=self[MLModelThreadsField].value,
            worker_memory=self[MLModelWorkerMemoryField].value,
            secrets=tuple(self[MLModelSecretsField].value or ()),
            min_replicas=self[MLModelMinReplicasField].value,
            max_replicas=self[MLModelMaxReplicasField].value,
            target_requests=self[MLModelTargetRequestsField].value,
            target_cpu=self[MLModelTargetCpuField].value,
            reserved_concurrency=self[MLModelReservedConcurrencyField].value,
            provisioned_concurrency=self[MLModelProvisionedConcurrencyField].value,
        )

    def validate(self) -> None:
        try:
            self.settings().check()
        except SettingError as e:
            raise InvalidTargetException(
                f"The `{e.setting}` field in target {self.address} "
                f"(compute={self[MLModelComputeField].value!r}) {e.message}"
            ) from None


class MLRScriptSourceField(SingleSourceField):
    expected_file_extensions = (".R",)
    help = "The R script, relative to this BUILD file's folder."


class MLRScriptTarget(Target):
    alias = "ml_r_script"
    core_fields = (*COMMON_TARGET_FIELDS, MLRScriptSourceField)
    help = help_text(
        """
        An R script of a model in R, e.g. its training script (the `ml_model`'s `train` field
        declares it): `pants run` runs the file where it lies (not a sandbox's copy) with this
        machine's `Rscript`, from the repository's root, so what it writes next to itself lands
        in the model's folder. R and the packages it loads come from Debian, as in the model's
        image (its `system_packages`).
        """
    )
