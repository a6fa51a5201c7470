"""What is being deployed: one model version's settings (from its `ml_model` target) and its
packaged image, identified by the image's manifest digest."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping

from ml_contract.model_settings import ModelSettings
from ml_contract.package_layout import IMAGE_LAYOUT
from ml_deploy.config import Environment
from ml_image.registry import read_layout
from ml_runtime.upstream import MODEL_URL_ENV


def short_digest(digest: str) -> str:
    """The first 12 hex digits of a sha256 digest, as engines and logs show images."""
    return digest.split(":", 1)[-1][:12]


@dataclass(frozen=True)
class Release:
    """A model version's settings (what its `ml_model` target says, `ModelSettings`: the one
    place a per-model setting is declared), where its package is, and its image's digest."""

    settings: ModelSettings
    package_dir: Path
    digest: str  # the image manifest's sha256: what "the same release" means everywhere

    @classmethod
    def from_settings(cls, settings: ModelSettings, package_dir: Path) -> "Release":
        return cls(settings, package_dir, read_layout(package_dir / IMAGE_LAYOUT).manifest_digest)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], package_dir: Path) -> "Release":
        """From settings as a dict (the fields of ModelSettings; unset ones take the defaults)."""
        return cls.from_settings(ModelSettings.from_dict(spec), package_dir)

    @classmethod
    def from_files(cls, spec_file: Path, package_dir: Path) -> "Release":
        """From the settings file `pants deploy` writes (ModelSettings.to_json)."""
        return cls.from_settings(ModelSettings.from_json(spec_file.read_text()), package_dir)

    # What identifies a release besides its digest, used by every driver.
    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def version(self) -> int:
        return self.settings.version

    @property
    def compute(self) -> str:
        return self.settings.compute

    def runtime_env(self, environment: Environment) -> Dict[str, str]:
        """The environment variables of the model's process, besides its secrets: its own `env`,
        and where the environment's models answer (for model-to-model calls)."""
        return {**self.settings.env, MODEL_URL_ENV: environment.model_url}

    def placed(self, compute: str) -> "Release":
        """This release run on `compute` (an environment may force one)."""
        return dataclasses.replace(self, settings=dataclasses.replace(self.settings, compute=compute))

    @property
    def short_digest(self) -> str:
        return short_digest(self.digest)

    @property
    def resource_name(self) -> str:
        """The name of this model version's AWS resources: one set per version, so /v1 and /v2
        live side by side."""
        return f"ml-{self.name}-v{self.version}".replace("_", "-")

    def hostname(self, environment: Environment) -> str:
        return f"{self.name.replace('_', '-')}.ml.{environment.domain}"

    def repository(self, environment: Environment) -> str:
        return environment.image_repository.format(name=self.name)

    def image_uri(self, environment: Environment) -> str:
        """By digest, never by tag: what runs is exactly what was built."""
        environment.require("registry", why=f"deploying {self.name} to {self.compute}")
        return f"{environment.registry}/{self.repository(environment)}@{self.digest}"

    def labels(self) -> Dict[str, str]:
        return {"ml.model": self.name, "ml.version": str(self.version), "ml.digest": self.digest}
