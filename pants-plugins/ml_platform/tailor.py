"""`pants tailor` for model folders: the one BUILD file of a new model, from what its `src/`
holds (the handler, requirements, artifacts, training script, examples), and the line its
resolve needs in pants.toml."""

from __future__ import annotations

import ast
import logging
import os
from dataclasses import dataclass
from typing import Optional

from ml_platform.model_folder import CODE_DIR, REQUIREMENTS
from ml_platform.target_types import MLModelTarget
from pants.backend.python.subsystems.setup import PythonSetup
from pants.core.goals.tailor import PutativeTarget, PutativeTargets, PutativeTargetsRequest
from pants.engine.fs import DigestContents, PathGlobs, Paths
from pants.engine.rules import Get, MultiGet, collect_rules, rule
from pants.engine.unions import UnionRule

logger = logging.getLogger(__name__)

HANDLERS = ("model.py", "model.R")
TRAINING_SCRIPTS = ("train.py", "train.R")
EXAMPLES = "examples.json"


@dataclass(frozen=True)
class PutativeMLModelTargetsRequest(PutativeTargetsRequest):
    pass


def handler_class(source: str) -> tuple[Optional[str], Optional[str]]:
    """The first top-level class with a `predict`, `generate` or `load` method (the handler),
    and the first line of its docstring or else the module's (the model's description)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None, None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            isinstance(item, ast.FunctionDef) and item.name in ("predict", "generate", "load") for item in node.body
        ):
            doc = ast.get_docstring(node) or ast.get_docstring(tree)
            return node.name, doc.strip().splitlines()[0] if doc and doc.strip() else None
    return None, None


def resolve_line(name: str, model_dir: str) -> str:
    return f'{name} = "{model_dir}/{name}.lock"'


@rule(desc="Finding model folders without a BUILD file")
async def find_putative_ml_models(request: PutativeMLModelTargetsRequest, python_setup: PythonSetup) -> PutativeTargets:
    code_dirs = [d for d in request.dirs if os.path.basename(d) == CODE_DIR]
    handlers, all_files, build_files = await MultiGet(
        Get(DigestContents, PathGlobs(os.path.join(d, h) for d in code_dirs for h in HANDLERS)),
        Get(Paths, PathGlobs(os.path.join(d, "**") for d in code_dirs)),
        Get(Paths, PathGlobs(os.path.join(d, *up, "BUILD") for d in code_dirs for up in ((), ("..",)))),
    )
    # A folder with a BUILD file is the author's already (whole-repository `files` targets own
    # every file, so ownership says nothing here).
    has_build = {os.path.normpath(os.path.dirname(f)) for f in build_files.files}
    found = []
    for handler in handlers:
        code_dir = os.path.dirname(handler.path)
        if code_dir in has_build or os.path.dirname(code_dir) in has_build:
            continue
        model_dir = os.path.dirname(code_dir)
        name = os.path.basename(model_dir)
        files = {f for f in all_files.files if f.startswith(code_dir + "/")}

        def rel(*parts: str) -> str:
            return os.path.join(CODE_DIR, *parts)

        description = None
        if handler.path.endswith(".R"):
            entry_point = rel(os.path.basename(handler.path))
        else:
            cls, description = handler_class(handler.content.decode(errors="replace"))
            if cls is None or os.path.join(code_dir, REQUIREMENTS) not in files:
                logger.warning(
                    f"{handler.path}: no model folder here: it needs a class with a `predict` (or "
                    f"`generate`) method and {os.path.join(code_dir, REQUIREMENTS)} beside it."
                )
                continue
            entry_point = f"{rel(os.path.basename(handler.path))}:{cls}"
        kwargs: dict = {**({"description": description} if description else {}), "entry_point": entry_point}
        train = next((s for s in TRAINING_SCRIPTS if os.path.join(code_dir, s) in files), None)
        # A training script writes the artifacts (into src/artifacts/, by convention), perhaps
        # only once this BUILD file lets it run.
        if train or any(f.startswith(os.path.join(code_dir, "artifacts") + "/") for f in files):
            kwargs["artifacts"] = (rel("artifacts", "**", "*"),)
        if train:
            kwargs["train"] = rel(train)
        data = [
            *([rel(EXAMPLES)] if os.path.join(code_dir, EXAMPLES) in files else []),
            *([rel("data", "**", "*")] if any(f.startswith(os.path.join(code_dir, "data") + "/") for f in files) else []),
        ]
        if data:
            kwargs["data"] = tuple(data)
        comments = []
        if name not in python_setup.resolves:
            line = resolve_line(name, model_dir)
            comments = [
                f"# Its resolve: add `{line}` under [python.resolves] in pants.toml,",
                f"# then run `./pants generate-lockfiles --resolve={name}`.",
            ]
            logger.warning(
                f"{model_dir}: a new model. Add this line under [python.resolves] in pants.toml:\n\n"
                f"    {line}\n\nthen run `./pants generate-lockfiles --resolve={name}` and "
                f"`./pants run {model_dir}:`."
            )
        found.append(PutativeTarget(model_dir, name, MLModelTarget.alias, (), (), kwargs=kwargs, comments=comments))
    return PutativeTargets(found)


def rules():
    return (*collect_rules(), UnionRule(PutativeTargetsRequest, PutativeMLModelTargetsRequest))
