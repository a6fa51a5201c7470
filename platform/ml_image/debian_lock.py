"""Regenerates `debian-base.lock.json`: the .debs of the model images' base layer, pinned by sha256.

Run it on a Debian machine of the target release and architecture (it asks this machine's apt
which versions are current), from the repository root:

    PYTHONPATH=platform python3 -m ml_image.debian_lock [--output PATH] [--update]

`--update` runs `apt-get update` first (needs root); without it the package lists apt already has
are used. Review the diff and commit the lock; `ml_image.debian_base` builds the layer from it.

The package set is the dependency closure (Depends and Pre-Depends; no Recommends) of ROOTS,
where every package in EXCLUDED counts as already satisfied and is never followed: they are
there for dpkg's maintainer scripts (debconf, perl), which a distroless image never runs. For
an "a | b" dependency the first alternative is taken, unless one is already chosen or excluded.

The lock stores paths relative to the archive root and which archive ("debian" or
"debian-security") serves each file, never a mirror URL: the builder takes the mirror from
the apt configuration of the machine it runs on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

from ml_image.debian_base import mirrors_from_sources, read_apt_sources

ROOTS = (
    "python3.11-minimal",  # the interpreter
    "libpython3.11-stdlib",  # the rest of the standard library (ssl, sqlite3, ctypes, ...)
    "ca-certificates",  # TLS roots for ssl and for requests/urllib3 pointed at the system bundle
    "tzdata",  # zoneinfo; ~2.5 MB unpacked, 0.3 MB compressed
    "netbase",  # /etc/services, /etc/protocols: socket.getservbyname, getaddrinfo("http")
    "libstdc++6",  # manylinux wheels (numpy, scipy, scikit-learn, torch) link against these two
    "libgcc-s1",
)
EXCLUDED = (
    "debconf",  # ca-certificates and tzdata ask questions at install time, not at run time
    "debconf-2.0",
    "cdebconf",
    "perl-base",
    "perl",
    "dpkg",  # readline-common's install-info trigger
    "install-info",
)
PYTHON_PACKAGE = "python3.11-minimal"


def _run(argv: Sequence[str]) -> str:
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    if result.returncode != 0:
        raise SystemExit(f"error: {' '.join(argv)} failed:\n{result.stderr.strip()}")
    return result.stdout


Group = List[str]  # alternatives of one dependency; a virtual package is "<name>"


def parse_apt_cache_depends(text: str) -> Tuple[Dict[str, List[Group]], Dict[str, List[str]]]:
    """Reads `apt-cache depends --recurse` output: package -> dependency groups, virtual -> providers."""
    depends: Dict[str, List[Group]] = {}
    providers: Dict[str, List[str]] = {}
    current: Optional[List[Group]] = None
    last_alternative = ""
    pending_or = False
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            # A package shows up again each time recursion meets it; the first listing is complete.
            current = depends.setdefault(line.strip(), []) if line.strip() not in depends else None
            continue
        match = re.match(r"^ ( |\|)(PreDepends|Depends): (\S+)", line)
        if match:
            or_marker, _, name = match.groups()
            if current is not None:
                if pending_or:
                    current[-1].append(name)
                else:
                    current.append([name])
            pending_or = or_marker == "|"
            last_alternative = name
        elif line.startswith("    ") and last_alternative.startswith("<"):
            virtual = last_alternative.strip("<>")
            if line.strip() not in providers.setdefault(virtual, []):
                providers[virtual].append(line.strip())
    return depends, providers


def closure(
    roots: Sequence[str],
    excluded: Sequence[str],
    depends: Mapping[str, List[Group]],
    providers: Mapping[str, List[str]],
) -> List[str]:
    chosen: Set[str] = set()
    skip = set(excluded)
    queue = list(roots)
    while queue:
        name = queue.pop(0)
        if name in chosen or name in skip:
            continue
        if name not in depends:
            raise SystemExit(f"error: apt knows no package {name!r} (run with --update?)")
        chosen.add(name)
        for group in depends[name]:
            candidates = []
            for alternative in group:
                if alternative.startswith("<"):
                    virtual = alternative.strip("<>")
                    candidates += [virtual] + providers.get(virtual, [])
                else:
                    candidates.append(alternative)
            if any(c in chosen or c in skip for c in candidates):
                continue
            real = [c for c in candidates if c in depends]
            if not real:
                raise SystemExit(f"error: nothing satisfies {' | '.join(group)} (for {name})")
            queue.append(real[0])
    return sorted(chosen)


def _stanzas(text: str) -> List[Dict[str, str]]:
    stanzas = []
    for block in text.strip().split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line and not line.startswith(" ") and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        stanzas.append(fields)
    return stanzas


def locked_packages(names: Sequence[str]) -> List[dict]:
    show = {s["Package"]: s for s in _stanzas(_run(["apt-cache", "show", "--no-all-versions", *names]))}
    # The URL tells which archive apt would download each file from.
    mirrors = mirrors_from_sources(read_apt_sources())
    prefixes = sorted(
        ((url.rstrip("/") + "/", archive) for archive, urls in mirrors.items() for url in urls),
        key=lambda p: -len(p[0]),
    )
    uris = _run(["apt-get", "download", "--print-uris", *names])
    packages = []
    for line in uris.splitlines():
        url, filename, size, checksum = line.split()
        url = url.strip("'")
        name = filename.split("_", 1)[0]
        fields = show[name]
        if checksum != "SHA256:" + fields["SHA256"] or int(size) != int(fields["Size"]):
            raise SystemExit(f"error: apt-cache show and apt-get download disagree about {name}")
        archive = next((a for prefix, a in prefixes if url.startswith(prefix)), None)
        if archive is None:
            raise SystemExit(f"error: {url} is from no configured debian or debian-security mirror")
        packages.append(
            {
                "name": name,
                "version": fields["Version"],
                "architecture": fields["Architecture"],
                "archive": archive,
                "path": fields["Filename"],
                "size": int(fields["Size"]),
                "sha256": fields["SHA256"],
                "installed_size_kb": int(fields.get("Installed-Size", 0)),
            }
        )
    if sorted(p["name"] for p in packages) != sorted(names):
        raise SystemExit("error: apt-get download --print-uris did not list every package")
    return sorted(packages, key=lambda p: p["name"])


def resolve_packages(roots: Sequence[str], excluded: Sequence[str]) -> List[dict]:
    """The locked .debs of the closure of `roots`, with every package in `excluded` satisfied."""
    depends, providers = parse_apt_cache_depends(
        _run(
            [
                "apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *roots,
            ]
        )
    )
    return locked_packages(closure(roots, excluded, depends, providers))


def release() -> Tuple[str, str]:
    """This machine's Debian release (codename) and architecture: what a lock is valid for."""
    codenames = {
        suite
        for source in read_apt_sources()
        if "deb" in source.types and source.archive == "debian"
        for suite in source.suites
        if "-" not in suite
    }
    if len(codenames) != 1:
        raise SystemExit(f"error: expected one Debian release in the apt sources, found {sorted(codenames)}")
    return codenames.pop(), _run(["dpkg", "--print-architecture"]).strip()


def generate_lock(roots: Sequence[str] = ROOTS, excluded: Sequence[str] = EXCLUDED) -> dict:
    packages = resolve_packages(roots, excluded)
    python = next(p for p in packages if p["name"] == PYTHON_PACKAGE)
    distribution, architecture = release()
    return {
        "comment": "Generated by `PYTHONPATH=platform python3 -m ml_image.debian_lock`; do not edit.",
        "distribution": distribution,
        "architecture": architecture,
        # Debian's 3.11.2-6+deb12u9 is upstream 3.11.2 with patches.
        "python_version": re.sub(r"^\d+:", "", python["version"]).split("-")[0],
        "python_debian_version": python["version"],
        "roots": list(roots),
        "excluded": list(excluded),
        "packages": packages,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m ml_image.debian_lock", description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "debian-base.lock.json"))
    parser.add_argument("--update", action="store_true", help="run apt-get update first")
    args = parser.parse_args(argv)
    if args.update:
        _run(["apt-get", "update"])
    lock = generate_lock()
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(lock, f, indent=2)
        f.write("\n")
    total = sum(p["size"] for p in lock["packages"])
    unpacked = sum(p["installed_size_kb"] for p in lock["packages"])
    print(
        f"wrote {args.output}: {len(lock['packages'])} packages, {total / 1e6:.1f} MB of .debs, "
        f"~{unpacked / 1e3:.0f} MB installed (before dropping docs), Python {lock['python_version']}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
