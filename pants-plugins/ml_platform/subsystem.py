from __future__ import annotations

from pants.option.option_types import BoolOption, StrOption
from pants.option.subsystem import Subsystem
from pants.util.strutil import help_text


class MLPlatform(Subsystem):
    options_scope = "ml-platform"
    help = help_text("Options shared by every `ml_model` target.")

    runtime = StrOption(
        default="//platform:ml_runtime",
        help=help_text(
            """
            Address of the target holding the runtime code that every model package ships with
            (the standard-library-only side of serving). Every `ml_model` depends on it, so a
            change to the runtime rebuilds every model.
            """
        ),
    )

    build_images = BoolOption(
        default=True,
        help=help_text(
            """
            Whether `package` also builds each model's OCI image (an OCI layout, `image/` in the
            model's package directory). Turn off to iterate on PEXes only.
            """
        ),
    )
    base_image = StrOption(
        default="embedded",
        help=help_text(
            """
            The base image of models that do not set `base_image`: `embedded` (Debian bookworm +
            Python from `base_lock`) or `registry/repository:tag@sha256:...`.
            """
        ),
    )
    image_tools = StrOption(
        default="//platform:image-tools",
        help=help_text(
            """
            Address of the `pex_binary` of the tools that build images (standard library only): layers,
            the Debian base, OCI layout, registry client. Run by Pants in sandboxed processes.
            """
        ),
    )
    base_lock = StrOption(
        default="platform/ml_image/debian-base.lock.json",
        help=help_text(
            """
            The lock file of the embedded default base image: Debian bookworm packages (with
            sha256) that make a minimal Python 3.11 root file system. Regenerate it with
            `PYTHONPATH=platform python3 -m ml_image.debian_lock`.
            """
        ),
    )
    image_repository = StrOption(
        default="ml/{name}",
        help=help_text(
            """
            The repository name of a model's image, `{name}` being the model's target name; the
            tag is `v<version>`. Used in the image's tarball (`docker load`) and for `publish`.
            """
        ),
    )
    registry = StrOption(
        default="",
        help=help_text(
            """
            The registry `pants publish` pushes model images to, e.g. `127.0.0.1:5000` or
            `123456789012.dkr.ecr.eu-west-1.amazonaws.com` (an ECR repository is created if
            missing; credentials come from boto3). Plain HTTP is used for loopback registries
            only. Other credentials: ML_REGISTRY_USERNAME and ML_REGISTRY_PASSWORD.
            """
        ),
    )
    deploy_config = StrOption(
        default="platform/deploy.yaml",
        help=help_text(
            """
            The deploy environments file: one top-level section per environment (`local`, `dev`,
            `prod`, ...) with its registry, AWS region, cluster, subnets, domain and so on;
            `pants deploy --deploy-env=<name>` picks one. Each setting is documented in
            `platform/ml_deploy/config.py`.
            """
        ),
    )
    deploy_tools = StrOption(
        default="//platform:deploy-tools",
        help=help_text(
            """
            Address of the `pex_binary` of the deploy tools (`python -m ml_deploy`: registry
            push, then one driver per compute type), run by `pants deploy`.
            """
        ),
    )
    gateway = StrOption(
        default="//platform:gateway",
        help=help_text(
            """
            Address of the `pex_binary` of the local gateway (`ml_gateway`), which
            `pants deploy` to a local environment starts when none runs. It is its own PEX, in
            no model's image: changing it changes no model's digest.
            """
        ),
    )
