"""Lays out a model's image from its package: the server layer, the model's dependencies layer
and the model's code layer, then assembles them on a base layer into an OCI image.

Image file system (both Python environments are venvs on the base image's /usr/bin/python3):

    /usr, /etc, ...   the base, then the model's system packages if it has any (a layer of
                      their own: ml_image.system_packages)
    /opt/ml/server/   the model server: identical bytes in every model's image
    /opt/ml/model/    the model's locked dependencies: each big one (torch, scipy, ...) a layer
                      of its own, shared by every image that locks the same wheel, then the rest
                      in one layer; then its code, artifacts and generated entry point (a layer
                      of their own, the one that changes)

Dependencies are laid out installed and byte-compiled at build time, so a container starts
without unpacking anything.

    python -m ml_image.model_image system-layer packages.json OUT_DIR --cache DIR
    python -m ml_image.model_image server-layer server.pex OUT_DIR
    python -m ml_image.model_image wheel-layer model.pex/.deps/<wheel> OUT_DIR
    python -m ml_image.model_image deps-layer model.pex OUT_DIR
    python -m ml_image.model_image code-layer model.pex OUT_DIR
    python -m ml_image.model_image assemble --layer DIR ... --layout OUT_DIR ...
    python -m ml_image.model_image docker-archive LAYOUT OUT.tar   (or - | docker load)

Each *-layer command writes OUT_DIR/layer.tar.gz and OUT_DIR/layer.json (digests); Pants runs
them as separate cached processes, so a code change rebuilds only the code layer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Sequence

from ml_contract.package_layout import CONTAINER_PORT, ENTRYPOINT_MODULE, OCI_INDEX, OWN_LAYER_MIN_BYTES, PULLED_BASE_INFO
from ml_image.layers import (
    Entry,
    LayerInfo,
    compress_layer,
    copy_blob,
    tree_entries,
    write_layer,
    write_tar,
)
from ml_image.media_types import (
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_MANIFEST,
)

PYTHON = "python3.11"
SERVER_ROOT = "/opt/ml/server"
MODEL_ROOT = "/opt/ml/model"
NONROOT = (65532, 65532)
PORT = CONTAINER_PORT
# The index annotation holding the image's full name (`ml/iris:v1`), which a docker archive needs.
_IMAGE_NAME_ANNOTATION = "io.containerd.image.name"
# PEX metadata and bootstrap files: not part of an installed environment.
_PEX_INTERNALS = {".bootstrap", ".deps", "PEX-INFO", "__main__.py", "__pex__", ".layout.json"}



def site_packages(root: str) -> str:
    return f"{root}/lib/{PYTHON}/site-packages"


DEFAULT_BASE_PYTHON = f"/usr/bin/{PYTHON}"


def venv_entries(root: str, base_python: str = DEFAULT_BASE_PYTHON) -> Iterator[Entry]:
    """A venv on the base image's interpreter, written directly (no `python -m venv` here)."""
    home = base_python.rsplit("/", 1)[0]
    yield Entry(f"{root}/pyvenv.cfg", "file", data=(
        f"home = {home}\ninclude-system-site-packages = false\nversion = {PYTHON[6:]}\n"
    ).encode())
    for name in ("python", "python3", PYTHON):
        yield Entry(f"{root}/bin/{name}", "symlink", 0o777, target=base_python)


def _compile(tree: Path, image_dir: str) -> None:
    """Byte-compile as the image would, with hash-based pycs: deterministic and never stale."""
    if sys.version_info[:2] != tuple(int(p) for p in PYTHON[6:].split(".")):
        print(f"warning: not byte-compiling: this is Python {sys.version_info[:2]}, the image has "
              f"{PYTHON}; containers will compile on import", file=sys.stderr)
        return
    # In a child with a fixed hash seed and nothing else from our environment: set constants
    # are marshalled in hash order, and marshal's back-references depend on which strings the
    # process has already interned, so either would make the same source give other bytes.
    # A file that is not Python 3.11 (torch ships py312-only test helpers) just gets no pyc, as
    # with pip; compileall then exits 1, which is no failure of the layer.
    done = subprocess.run(
        [sys.executable, "-s", "-S", "-m", "compileall", "-q", "-j", "1",
         "--invalidation-mode", "unchecked-hash", "-d", image_dir, str(tree)],
        env={"PYTHONHASHSEED": "0"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    if done.returncode not in (0, 1):
        raise RuntimeError(f"byte-compiling {tree} failed ({done.returncode}):\n{done.stdout[-3000:]}")
    skipped = done.stdout.count("*** Error compiling")
    if skipped:
        print(f"{skipped} file(s) are not valid {PYTHON} and get no pyc", file=sys.stderr)


def _installed_file(relative: str) -> bool:
    """Whether a path inside one of pex's installed-wheel chroots belongs in site-packages
    (not pex's own layout metadata, scripts prefix or directory entries)."""
    return not (relative.startswith(("../", ".prefix/")) or relative == ".layout.json"
                or relative.endswith("/") or not relative)


def _extract(zf: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(member) as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    if member.external_attr >> 16 & 0o111:
        target.chmod(0o755)


def _extract_installed_wheel(wheel: Path, dest: Path) -> None:
    """Pex keeps each dependency as an installed-wheel zip: its files are site-packages as is."""
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.infolist():
            if _installed_file(member.filename):
                _extract(zf, member, dest / member.filename)


def own_layer_wheels(model_pex: Path) -> list[Path]:
    """The dependencies of a packed model.pex that get a layer of their own, in layer order, as
    the plugin picks them from the same sizes (OWN_LAYER_MIN_BYTES): for tests and benches."""
    return sorted(w for w in (model_pex / ".deps").glob("*.whl") if w.stat().st_size >= OWN_LAYER_MIN_BYTES)


def deps_layer(model_pex: Path, out: Path, base_python: str = DEFAULT_BASE_PYTHON) -> LayerInfo:
    """The venv and every dependency in `model_pex/.deps`: the plugin hands this process only
    the wheels too small for a layer of their own (it alone decides which those are)."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        for wheel in sorted((model_pex / ".deps").glob("*.whl")):
            _extract_installed_wheel(wheel, tree)
        _compile(tree, site_packages(MODEL_ROOT))
        return write_layer([*venv_entries(MODEL_ROOT, base_python), *tree_entries(tree, site_packages(MODEL_ROOT))],
                           out / "layer.tar.gz")


def wheel_layer(wheel: Path, out: Path, base_python: str = DEFAULT_BASE_PYTHON) -> LayerInfo:
    """One big dependency on its own (`ml_contract.package_layout.OWN_LAYER_MIN_BYTES`), at the
    site-packages path every model image shares: the same wheel gives the same bytes in every
    image, so a registry stores it once and a host pulls it once."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        _extract_installed_wheel(wheel, tree)
        _compile(tree, site_packages(MODEL_ROOT))
        return write_layer(tree_entries(tree, site_packages(MODEL_ROOT)), out / "layer.tar.gz")


def code_layer(model_pex: Path, out: Path, base_python: str = DEFAULT_BASE_PYTHON) -> LayerInfo:
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        for item in sorted(model_pex.iterdir()):
            if item.name in _PEX_INTERNALS:
                continue
            if item.is_dir():
                shutil.copytree(item, tree / item.name)
            else:
                shutil.copy2(item, tree / item.name)
        _compile(tree, site_packages(MODEL_ROOT))
        entries = list(tree_entries(tree, site_packages(MODEL_ROOT)))
        # The directories already exist in the deps layer; repeating them here would only
        # make this layer differ when nothing in it changed.
        entries = [e for e in entries if e.kind != "dir" or e.path != site_packages(MODEL_ROOT)]
        return write_layer(entries, out / "layer.tar.gz")


def server_layer(server_pex: Path, out: Path, base_python: str = DEFAULT_BASE_PYTHON) -> LayerInfo:
    """The server's zipapp PEX, installed: its dependencies and its own code in one venv."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        with zipfile.ZipFile(server_pex) as zf:
            for member in zf.infolist():
                if member.is_dir():
                    continue
                parts = member.filename.split("/")
                if parts[0] == ".deps" and len(parts) > 2:
                    relative = "/".join(parts[2:])  # .deps/<wheel>/<installed file>
                    if _installed_file(relative):
                        _extract(zf, member, tree / relative)
                elif parts[0] not in _PEX_INTERNALS:
                    _extract(zf, member, tree / member.filename)
        _compile(tree, site_packages(SERVER_ROOT))
        return write_layer([*venv_entries(SERVER_ROOT, base_python), *tree_entries(tree, site_packages(SERVER_ROOT))],
                           out / "layer.tar.gz")


def base_layer(lock: Path, out: Path, cache: Path) -> LayerInfo:
    """The embedded default base: Debian bookworm + Python, from the pinned .debs in `lock`."""
    from ml_image.debian_base import build_base_layer

    tar_path = out / "layer.tar"
    build_base_layer(str(lock), str(cache), str(tar_path))
    try:
        _add_stdlib_pycs(tar_path)
        return compress_layer(tar_path, out / "layer.tar.gz")
    finally:
        tar_path.unlink()


def system_layer(packages: Path, out: Path, cache: Path) -> LayerInfo:
    """A model's system packages, from its lock's package list (ml_image.system_packages)."""
    from ml_image.system_packages import build_layer

    tar_path = out / "layer.tar"
    build_layer(str(packages), str(cache), str(tar_path))
    try:
        return compress_layer(tar_path, out / "layer.tar.gz")
    finally:
        tar_path.unlink()


def _add_stdlib_pycs(tar_path: Path) -> None:
    """Debian compiles the standard library at install time (postinst), which an image built
    from .debs never runs: without these every container start compiles what it imports."""
    stdlib = f"usr/lib/{PYTHON}"
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        with tarfile.open(tar_path) as tar:
            members = [m for m in tar if m.isfile() and m.name.startswith(stdlib + "/")
                       and m.name.endswith(".py") and "/test/" not in m.name]
            for member in members:
                target = tree / member.name[len(stdlib) + 1:]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
        _compile(tree, "/" + stdlib)
        pycs = sorted(p for p in tree.rglob("*.pyc"))
        if not pycs:
            return
        with tarfile.open(tar_path, "a", format=tarfile.PAX_FORMAT) as tar:
            for directory in sorted({p.parent for p in pycs}):
                info = tarfile.TarInfo(f"{stdlib}/{directory.relative_to(tree).as_posix()}")
                info.type, info.mode, info.mtime, info.uname, info.gname = tarfile.DIRTYPE, 0o755, 0, "", ""
                tar.addfile(info)
            for pyc in pycs:
                info = tarfile.TarInfo(f"{stdlib}/{pyc.relative_to(tree).as_posix()}")
                info.size, info.mode, info.mtime, info.uname, info.gname = pyc.stat().st_size, 0o644, 0, "", ""
                with pyc.open("rb") as f:
                    tar.addfile(info, f)


def base_from_registry(reference: str, out: Path, cache: Path) -> dict:
    """Pull a base image by reference and lay it out as layer directories `out/<n>/` plus
    `out/base.json` (PULLED_BASE_INFO): the base's environment and where its Python is, for
    the other layers."""
    from ml_image.registry import Auth, Reference, pull

    ref = Reference.parse(reference)
    with tempfile.TemporaryDirectory() as tmp:
        layout = Path(tmp) / "layout"
        result = pull(ref, layout, Auth.from_env(ref.registry), cache_dir=cache)
        blobs = layout / "blobs" / "sha256"
        manifest = json.loads((blobs / result.manifest_digest.split(":")[1]).read_text())
        config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_text())
        diff_ids = config["rootfs"]["diff_ids"]
        pythons: dict[str, str] = {}
        for n, (layer, diff_id) in enumerate(zip(manifest["layers"], diff_ids)):
            layer_dir = out / f"{n:02d}"
            layer_dir.mkdir(parents=True)
            blob = blobs / layer["digest"].split(":")[1]
            shutil.copyfile(blob, layer_dir / "layer.tar.gz")
            LayerInfo(layer["digest"], layer["size"], diff_id).write(layer_dir / "layer.json")
            with tarfile.open(blob) as tar:
                for member in tar:
                    name = "/" + member.name.lstrip("./")
                    if name in (f"/usr/local/bin/{PYTHON}", f"/usr/bin/{PYTHON}"):
                        pythons[name] = name
    env = config.get("config", {}).get("Env") or []
    version = next((e.split("=", 1)[1] for e in env if e.startswith("PYTHON_VERSION=")), None)
    labels = config.get("config", {}).get("Labels") or {}
    version = labels.get("ml-platform.python.version", version)
    base = {
        "reference": reference,
        "env": env,
        # /usr/local first: python.org-built images put their interpreter there.
        "python_path": pythons.get(f"/usr/local/bin/{PYTHON}") or pythons.get(f"/usr/bin/{PYTHON}"),
        "python_version": version,
        "layers": len(diff_ids),
    }
    (out / PULLED_BASE_INFO).write_text(json.dumps(base, indent=2, sort_keys=True) + "\n")
    return base


def image_config(
    layers: Sequence[LayerInfo], *, name: str, version: int, address: str, revision: str,
    env: dict[str, str], description: str, base_env: Sequence[str] = (), base_name: str = "",
) -> dict:
    labels = {
        "org.opencontainers.image.title": name,
        "org.opencontainers.image.version": str(version),
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.description": description or f"ml_model {address}",
        "ml-platform.model.address": address,
        "ml-platform.model.version": str(version),
        "org.opencontainers.image.base.name": base_name or "embedded Debian bookworm + Python",
    }
    inherited = dict(e.split("=", 1) for e in base_env if "=" in e)
    platform_env = {
        "PATH": inherited.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "ML_SERVER": f"{SERVER_ROOT}/bin/python3 -m ml_serving.main",
        "ML_HOST": "0.0.0.0",
        "ML_PORT": str(PORT),
        # Everything is byte-compiled already, and the image's files are not ours to write.
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": f"{NONROOT[0]}:{NONROOT[1]}",
            "Entrypoint": [f"{MODEL_ROOT}/bin/python3", "-m", ENTRYPOINT_MODULE, "serve"],
            "Env": [f"{k}={v}" for k, v in {**inherited, **platform_env, **env}.items()],
            "ExposedPorts": {f"{PORT}/tcp": {}},
            "WorkingDir": "/home/nonroot",
            "Labels": labels,
            "StopSignal": "SIGTERM",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created_by": step, "comment": "ml-platform"}
            for step in [f"base layer {n + 1}" for n in range(len(layers) - 3)]
            + ["model server", "model dependencies", "model code"]
        ],
    }


def _json_bytes(value: dict) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def assemble(layer_dirs: Sequence[Path], config: dict, layout: Path, tag: str) -> str:
    """Write an OCI image layout; returns the manifest digest."""
    layers = [LayerInfo.read(d / "layer.json") for d in layer_dirs]
    if layout.exists():
        shutil.rmtree(layout)
    blobs = layout / "blobs"
    for layer, directory in zip(layers, layer_dirs):
        copy_blob(directory / "layer.tar.gz", blobs, layer.digest)
    config_bytes = _json_bytes(config)
    config_digest = _write_blob(blobs, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [
            {"mediaType": MEDIA_TYPE_OCI_LAYER_GZIP, "digest": l.digest, "size": l.size}
            for l in layers
        ],
        "annotations": {"org.opencontainers.image.title": config["config"]["Labels"]["org.opencontainers.image.title"]},
    }
    manifest_bytes = _json_bytes(manifest)
    manifest_digest = _write_blob(blobs, manifest_bytes)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": [{
            "mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest_bytes),
            "annotations": {"org.opencontainers.image.ref.name": tag.rsplit(":", 1)[-1],
                            _IMAGE_NAME_ANNOTATION: tag},
        }],
    }
    (layout / OCI_INDEX).write_bytes(_json_bytes(index))
    return manifest_digest


def _write_blob(blobs: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = blobs / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def write_docker_archive(layout: Path, fileobj: BinaryIO) -> str:
    """Stream the image of an OCI layout as a `docker load` / `podman load` archive to `fileobj`
    (which need not be seekable); returns its tag. The package keeps only the layout: for a
    multi-gigabyte image a second copy as a tar would double the build's output, so the archive
    is made when an engine loads it."""
    from ml_image.registry.layout import blob_path, read_layout

    image = read_layout(layout)  # checked: one manifest, every blob present at its size
    (entry,) = json.loads((layout / OCI_INDEX).read_text())["manifests"]
    tag = entry["annotations"][_IMAGE_NAME_ANNOTATION]
    member = lambda digest: f"blobs/sha256/{digest.split(':', 1)[1]}"  # noqa: E731
    docker_manifest = [{
        "Config": member(image.config.digest),
        "RepoTags": [tag],
        "Layers": [member(layer.digest) for layer in image.layers],
    }]
    entries = [
        *(Entry(f"/{member(d)}", "file", source=blob_path(layout, d))
          for d in sorted({blob.digest for blob in image.blobs})),
        Entry("/manifest.json", "file", data=json.dumps(docker_manifest).encode()),
    ]
    write_tar(entries, fileobj)
    return tag


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="model_image", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    downloading = ("base-layer", "base-from-registry", "system-layer")
    for command in (*downloading, "server-layer", "wheel-layer", "deps-layer", "code-layer"):
        p = sub.add_parser(command)
        p.add_argument("source", help="The base's lock file or reference, the system packages' list, "
                                      "or the PEX to lay out.")
        p.add_argument("out", type=Path)
        if command in downloading:
            p.add_argument("--cache", type=Path, required=True, help="Downloaded blobs, by sha256.")

        else:
            p.add_argument("--base-python", default=DEFAULT_BASE_PYTHON,
                           help="The base image's python3.11, which the venvs point at.")
    p = sub.add_parser("assemble")
    p.add_argument("--layer", type=Path, action="append", required=True,
                   help="A directory with layer.tar.gz and layer.json; base first.")
    p.add_argument("--base", type=Path, help="A pulled base (base-from-registry output): its env.")
    p.add_argument("--manifest", required=True, help="The model's manifest, as JSON.")
    p.add_argument("--env", default="{}", help="Extra environment, as a JSON object.")
    p.add_argument("--revision", default="unknown")
    p.add_argument("--tag", required=True)
    p.add_argument("--layout", type=Path, required=True)
    p = sub.add_parser("docker-archive", help="The image of an OCI layout as a `docker load` archive.")
    p.add_argument("layout", type=Path, help="The package's image/ directory.")
    p.add_argument("out", help="The archive to write, or - for standard output (`... - | docker load`).")
    args = parser.parse_args(argv)

    if args.command == "docker-archive":
        if args.out == "-":
            tag = write_docker_archive(args.layout, sys.stdout.buffer)
        else:
            with open(args.out, "wb") as f:
                tag = write_docker_archive(args.layout, f)
        print(f"wrote {tag} to {args.out}", file=sys.stderr)
        return 0

    if args.command == "assemble":
        manifest = json.loads(args.manifest)
        layer_dirs = list(args.layer)
        base = {}
        if args.base is not None:
            base = json.loads((args.base / PULLED_BASE_INFO).read_text())
            layer_dirs = sorted(p.parent for p in args.base.glob("*/layer.json")) + layer_dirs
        layers = [LayerInfo.read(d / "layer.json") for d in layer_dirs]
        config = image_config(
            layers, name=manifest["name"], version=manifest["version"], address=manifest["address"],
            revision=args.revision, env=json.loads(args.env), description=manifest.get("description", ""),
            base_env=base.get("env", ()), base_name=base.get("reference", ""),
        )
        args.layer = layer_dirs
        digest = assemble(args.layer, config, args.layout, args.tag)
        print(digest)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "base-from-registry":
        print(json.dumps(base_from_registry(args.source, args.out, args.cache)))
        return 0
    if args.command == "base-layer":
        info = base_layer(Path(args.source), args.out, args.cache)
    elif args.command == "system-layer":
        info = system_layer(Path(args.source), args.out, args.cache)
    else:
        build = {"server-layer": server_layer, "wheel-layer": wheel_layer, "deps-layer": deps_layer,
                 "code-layer": code_layer}
        info = build[args.command](Path(args.source), args.out, args.base_python)
    info.write(args.out / "layer.json")
    print(json.dumps({"layer": args.command, "digest": info.digest, "size": info.size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
