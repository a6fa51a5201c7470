"""Builds the base layer of every model image: Debian + Python from a locked set of .debs.

No Docker daemon, no dpkg, no chroot: each .deb listed in `debian-base.lock.json` (written by
`ml_image.debian_lock`) is downloaded from the Debian mirror apt is configured with, checked
against the lock's size and sha256, unpacked in Python (an `ar` archive holding `data.tar.*`),
and merged into one uncompressed, reproducible tar (distroless-style: no maintainer scripts run,
so the few things they would have made are written here instead).

    PYTHONPATH=platform python3 -m ml_image.debian_base \\
        --lock platform/ml_image/debian-base.lock.json \\
        --cache ~/.cache/ml-platform/debs --output base-layer.tar

Layout choices:
- merged /usr, as on any bookworm system: files the debs put under /bin, /sbin, /lib, /lib64
  are moved to /usr/..., and /bin -> usr/bin etc. are symlinks, so /lib64/ld-linux-x86-64.so.2
  resolves and absolute links such as /lib/x86_64-linux-gnu/... keep working;
- hard links stay hard links: of the paths sharing one file, the first in sort order carries the
  data and the others link to it (a tar link must come after its target);
- documentation, man pages, translations and lintian overrides are dropped; device nodes too;
- every entry: mtime 0, uid/gid 0 (except /home/nonroot), no user/group names, sorted by path.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import posixpath
import re
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import IO, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from ml_image import layers

DEFAULT_MIRRORS = {
    "debian": "http://deb.debian.org/debian",
    "debian-security": "http://deb.debian.org/debian-security",
}
DEFAULT_CACHE = os.path.join("~", ".cache", "ml-platform", "debs")

# Directories bookworm merges into /usr (what the usrmerge/base-files packages set up).
MERGED_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
DROPPED = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
)
NONROOT_ID = 65532


class DebError(Exception):
    """A .deb that cannot be fetched, verified or unpacked; the message names the package."""


# ----------------------------------------------------------------------------------------------
# apt sources: which mirror serves the "debian" and the "debian-security" archive


@dataclass
class Source:
    types: List[str]
    uris: List[str]
    suites: List[str]
    components: List[str] = field(default_factory=list)

    @property
    def archive(self) -> str:
        # Security updates live under their own root (debian-security), with suites named
        # "<codename>-security" (or "<codename>/updates" before bullseye).
        if any(s.endswith("-security") or s.endswith("/updates") for s in self.suites):
            return "debian-security"
        return "debian"


def parse_deb822_sources(text: str) -> List[Source]:
    """Parses a `.sources` file (deb822: stanzas of `Field: value`, blank-line separated)."""
    sources = []
    for stanza in _deb822_stanzas(text):
        if stanza.get("enabled", "yes").strip().lower() == "no":
            continue
        sources.append(
            Source(
                types=stanza.get("types", "").split(),
                uris=stanza.get("uris", "").split(),
                suites=stanza.get("suites", "").split(),
                components=stanza.get("components", "").split(),
            )
        )
    return sources


def _deb822_stanzas(text: str) -> Iterator[Dict[str, str]]:
    stanza: Dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue  # comments may sit inside a stanza without ending it
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, None
        elif line[0] in " \t" and key:
            stanza[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            stanza[key] = value.strip()
    if stanza:
        yield stanza


def parse_one_line_sources(text: str) -> List[Source]:
    """Parses the classic `sources.list` format: `deb [options] uri suite [component...]`."""
    sources = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        rest = rest.strip()
        if rest.startswith("["):
            rest = rest[rest.index("]") + 1 :].strip() if "]" in rest else ""
        words = rest.split()
        if len(words) < 2:
            continue
        sources.append(Source(types=[kind], uris=[words[0]], suites=[words[1]], components=words[2:]))
    return sources


def read_apt_sources(etc_apt: str = "/etc/apt") -> List[Source]:
    sources = []
    one_line = [os.path.join(etc_apt, "sources.list")]
    one_line += sorted(glob.glob(os.path.join(etc_apt, "sources.list.d", "*.list")))
    for path in one_line:
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                sources += parse_one_line_sources(f.read())
    for path in sorted(glob.glob(os.path.join(etc_apt, "sources.list.d", "*.sources"))):
        with open(path, encoding="utf-8") as f:
            sources += parse_deb822_sources(f.read())
    return sources


def mirrors_from_sources(sources: Iterable[Source]) -> Dict[str, List[str]]:
    """Archive name -> base URLs to try in order; the public mirror is always the last resort."""
    mirrors: Dict[str, List[str]] = {}
    for source in sources:
        if "deb" not in source.types:
            continue
        for uri in source.uris:
            urls = mirrors.setdefault(source.archive, [])
            if uri.rstrip("/") not in urls:
                urls.append(uri.rstrip("/"))
    for archive, default in DEFAULT_MIRRORS.items():
        urls = mirrors.setdefault(archive, [])
        if default not in urls:
            urls.append(default)
    return mirrors


# ----------------------------------------------------------------------------------------------
# The lock and the .debs it names


def load_lock(lock_path: str) -> dict:
    with open(lock_path, encoding="utf-8") as f:
        lock = json.load(f)
    if not lock.get("packages"):
        raise DebError(f"{lock_path}: no packages; regenerate it with ml_image.debian_lock")
    return lock


def base_python_version(lock_path: str) -> str:
    """The Python version of the base image (e.g. "3.11.2"), to check a model's constraints."""
    return load_lock(lock_path)["python_version"]


def verify_deb(package: Mapping, data: bytes, origin: str = "") -> None:
    where = f" (from {origin})" if origin else ""
    name = f"{package['name']} {package['version']}"
    if len(data) != package["size"]:
        raise DebError(
            f"{name}: size mismatch{where}: expected {package['size']} bytes, got {len(data)}"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != package["sha256"]:
        raise DebError(
            f"{name}: sha256 mismatch{where}: expected {package['sha256']}, got {digest}"
        )


def fetch_deb(
    package: Mapping,
    cache_dir: str,
    mirrors: Mapping[str, Sequence[str]],
    log: IO[str] = sys.stderr,
) -> bytes:
    """The verified bytes of one locked .deb, from the cache or else from the first mirror that has it."""
    cached = os.path.join(cache_dir, package["sha256"] + ".deb")
    if os.path.exists(cached):
        with open(cached, "rb") as f:
            data = f.read()
        verify_deb(package, data, cached)  # a corrupted cache must not go into an image
        return data

    errors = []
    for base in mirrors.get(package["archive"], ()):
        url = base.rstrip("/") + "/" + urllib.parse.quote(package["path"])
        print(f"fetch {package['name']} {package['version']} ({package['size']:,} B) {url}", file=log)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                data = response.read()
        except (urllib.error.URLError, OSError) as e:
            errors.append(f"{url}: {e}")
            continue
        verify_deb(package, data, url)
        os.makedirs(cache_dir, exist_ok=True)
        # Write then rename, so concurrent builds never read a partial file.
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, cached)
        except BaseException:
            os.unlink(tmp)
            raise
        return data
    raise DebError(
        f"{package['name']} {package['version']}: cannot download from the "
        f"{package['archive']!r} archive: " + ("; ".join(errors) or "no mirror configured")
    )


# ----------------------------------------------------------------------------------------------
# Unpacking: a .deb is an `ar` archive of debian-binary, control.tar.* and data.tar.*


def read_ar(data: bytes) -> List[Tuple[str, bytes]]:
    if not data.startswith(b"!<arch>\n"):
        raise DebError("not an ar archive (no !<arch> header)")
    members = []
    offset = 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        if header[58:60] != b"`\n":
            raise DebError(f"corrupt ar member header at offset {offset}")
        name = header[0:16].decode("ascii").rstrip(" ")
        size = int(header[48:58].decode("ascii").strip())
        body = data[offset + 60 : offset + 60 + size]
        if name.startswith("#1/"):  # BSD: the name is stored before the data
            name_len = int(name[3:])
            name, body = body[:name_len].decode("utf-8").rstrip("\0"), body[name_len:]
        members.append((name.rstrip("/"), body))
        offset += 60 + size + (size % 2)  # members are 2-byte aligned
    return members


def open_member(deb: bytes, prefix: str, package_name: str) -> tarfile.TarFile:
    """The .deb's `data.tar.*` or `control.tar.*` member, opened."""
    for name, body in read_ar(deb):
        if not name.startswith(prefix):
            continue
        if name.endswith(".zst"):
            raise DebError(
                f"{package_name}: {name} is zstd-compressed, which Python's standard library "
                "cannot read (bookworm's own .debs use xz)"
            )
        # "r:*" reads plain, gzip, bzip2 and xz tars.
        return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
    raise DebError(f"{package_name}: no {prefix}.* member in the .deb")


@dataclass
class Entry:
    path: str  # relative, no "./", no trailing slash
    kind: str  # "dir", "file", "symlink" or "hardlink"
    mode: int
    data: bytes = b""
    linkname: str = ""  # symlink target as written, or the path a hard link points to
    uid: int = 0
    gid: int = 0
    package: str = ""


def merged_path(path: str) -> str:
    """Where a path of a .deb ends up on a merged-/usr system."""
    path = posixpath.normpath("/" + path).lstrip("/")
    if ".." in path.split("/"):
        raise DebError(f"unsafe path in a .deb: {path}")
    top = path.split("/", 1)[0]
    return "usr/" + path if top in MERGED_DIRS else path


def _is_dropped(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in DROPPED)


def _moved_link(original: str, path: str, target: str) -> str:
    """A relative symlink target that still points at the same file after the usrmerge move."""
    if target.startswith("/"):
        return target  # resolved through the /lib -> usr/lib links at run time
    pointee = posixpath.normpath(posixpath.join("/", posixpath.dirname(original), target)).lstrip("/")
    if path == original and merged_path(pointee) == pointee:
        return target
    return posixpath.relpath(merged_path(pointee), posixpath.dirname(path) or ".")


def deb_entries(deb: bytes, package_name: str) -> Iterator[Entry]:
    with open_member(deb, "data.tar", package_name) as tar:
        for member in tar:
            original = posixpath.normpath("/" + member.name).lstrip("/")
            if not original:
                continue  # "./" itself
            path = merged_path(original)
            if _is_dropped(path):
                continue
            mode = member.mode & 0o7777
            if member.isdir():
                yield Entry(path, "dir", mode, package=package_name)
            elif member.isreg():
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                yield Entry(path, "file", mode, data, package=package_name)
            elif member.issym():
                yield Entry(path, "symlink", 0o777, linkname=_moved_link(original, path, member.linkname),
                            package=package_name)
            elif member.islnk():
                # The data rides along, in case the link's target is one of the dropped paths.
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                yield Entry(path, "hardlink", mode, data, merged_path(member.linkname), package=package_name)
            # device nodes and fifos: nothing in a container needs them from the image


# ----------------------------------------------------------------------------------------------
# The root filesystem


def merge_entries(entries: Iterable[Entry], into: Dict[str, Entry]) -> None:
    for entry in entries:
        existing = into.get(entry.path)
        if existing is None:
            into[entry.path] = entry
        elif existing.kind == entry.kind == "dir":
            continue  # shared directories, e.g. usr/lib/x86_64-linux-gnu
        elif (existing.kind, existing.data, existing.linkname) != (entry.kind, entry.data, entry.linkname):
            raise DebError(
                f"{entry.path} is shipped differently by {existing.package} and {entry.package}"
            )


def _ensure_parents(entries: Dict[str, Entry]) -> None:
    for path in list(entries):
        parent = posixpath.dirname(path)
        while parent and parent not in entries:
            entries[parent] = Entry(parent, "dir", 0o755)
            parent = posixpath.dirname(parent)


def _resolve_hardlinks(entries: Dict[str, Entry]) -> None:
    # Group each hard link with its target; the smallest path of a group carries the data.
    groups: Dict[str, List[str]] = {}
    for entry in entries.values():
        if entry.kind == "hardlink":
            groups.setdefault(entry.linkname, []).append(entry.path)
    for target, links in groups.items():
        source = entries.get(target)
        if source is not None and source.kind != "file":
            raise DebError(f"hard link {links[0]} points to {target}, which is not a regular file")
        members = sorted(links + ([target] if source is not None else []))
        first = entries[members[0]]
        entries[first.path] = Entry(first.path, "file", first.mode, first.data, package=first.package)
        for path in members[1:]:
            entries[path] = Entry(path, "hardlink", entries[path].mode, linkname=first.path, package=first.package)


def _system_files(entries: Dict[str, Entry], lock: Mapping) -> List[Entry]:
    """What base-files, base-passwd and the maintainer scripts we never run would have made."""
    def text(path: str, content: str, mode: int = 0o644) -> Entry:
        return Entry(path, "file", mode, content.encode("utf-8"), package="ml_image")

    # update-ca-certificates (ca-certificates' postinst) builds this bundle; Python's ssl
    # finds it through openssl's /usr/lib/ssl/cert.pem link.
    pems = [
        e.data if e.data.endswith(b"\n") else e.data + b"\n"
        for path, e in sorted(entries.items())
        if path.startswith("usr/share/ca-certificates/") and path.endswith(".crt") and e.kind == "file"
    ]
    extra = [
        Entry(d, "symlink", 0o777, linkname="usr/" + d)
        for d in MERGED_DIRS
        if d in ("bin", "sbin", "lib") or "usr/" + d in entries
    ]
    extra += [
        Entry("tmp", "dir", 0o1777),
        Entry("root", "dir", 0o700),
        Entry("home", "dir", 0o755),
        Entry("home/nonroot", "dir", 0o755, uid=NONROOT_ID, gid=NONROOT_ID),
        Entry("usr/bin/python3", "symlink", 0o777, linkname="python3.11"),
        Entry("etc/ssl/certs/ca-certificates.crt", "file", 0o644, b"".join(pems), package="ml_image"),
        text(
            "etc/passwd",
            "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"nonroot:x:{NONROOT_ID}:{NONROOT_ID}::/home/nonroot:/usr/sbin/nologin\n",
        ),
        text("etc/group", f"root:x:0:\nnonroot:x:{NONROOT_ID}:\n"),
        text("etc/nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
             "networks: files\nprotocols: files\nservices: files\n"),
    ]
    if "etc/os-release" not in entries and "usr/lib/os-release" not in entries:
        extra.append(text(
            "etc/os-release",
            'PRETTY_NAME="Debian GNU/Linux 12 (bookworm), distroless ml-platform base"\n'
            'NAME="Debian GNU/Linux"\nID=debian\nVERSION_ID="12"\n'
            f"VERSION_CODENAME={lock.get('distribution', 'bookworm')}\n"
            'HOME_URL="https://www.debian.org/"\n',
        ))
    if "usr/share/zoneinfo/Etc/UTC" in entries:  # tzdata's postinst would set these
        extra.append(Entry("etc/localtime", "symlink", 0o777, linkname="/usr/share/zoneinfo/Etc/UTC"))
        extra.append(text("etc/timezone", "Etc/UTC\n"))
    return extra


def unpack_packages(
    packages: Iterable[Mapping],
    cache_dir: str,
    mirrors: Mapping[str, Sequence[str]],
    log: IO[str] = sys.stderr,
    each_deb: Callable[[str, bytes], None] = lambda name, deb: None,
) -> Dict[str, Entry]:
    """The merged contents of the locked `packages` (fetched and verified), by path; `each_deb`
    sees every package's .deb on the way."""
    entries: Dict[str, Entry] = {}
    for package in sorted(packages, key=lambda p: p["name"]):
        deb = fetch_deb(package, cache_dir, mirrors, log)
        each_deb(package["name"], deb)
        merge_entries(deb_entries(deb, package["name"]), entries)
    return entries


def finish_tree(entries: Dict[str, Entry]) -> List[Entry]:
    """Parent directories added, hard links resolved, sorted by path: ready for a layer."""
    _ensure_parents(entries)
    _resolve_hardlinks(entries)
    return [entries[path] for path in sorted(entries)]


def build_base_rootfs(
    lock: Mapping,
    cache_dir: str,
    mirrors: Mapping[str, Sequence[str]],
    log: IO[str] = sys.stderr,
) -> List[Entry]:
    """Every entry of the base root filesystem, sorted by path."""
    entries = unpack_packages(lock["packages"], cache_dir, mirrors, log)
    for entry in _system_files(entries, lock):
        entries[entry.path] = entry  # ours win over anything a .deb shipped at that path
    return finish_tree(entries)


def layer_entries(entries: Iterable[Entry]) -> Iterator[layers.Entry]:
    """The same entries, in the same order, as `ml_image.layers` entries (absolute paths), for
    `layers.write_tar`: the layer's bytes come from the one deterministic tar writer."""
    for entry in entries:
        if entry.kind == "hardlink":
            target = "/" + entry.linkname  # a path in the root file system, like entry.path
        else:
            target = entry.linkname  # a symlink's target, as written
        yield layers.Entry(
            "/" + entry.path,
            entry.kind,
            entry.mode,
            data=entry.data if entry.kind == "file" else None,
            target=target,
            uid=entry.uid,
            gid=entry.gid,
        )


def build_base_layer(
    lock_path: str,
    cache_dir: str,
    output: str,
    mirrors: Optional[Mapping[str, Sequence[str]]] = None,
    log: IO[str] = sys.stderr,
) -> str:
    """Builds the layer tar at `output` and returns its sha256 (the OCI diff_id, without "sha256:")."""
    lock = load_lock(lock_path)
    if mirrors is None:
        mirrors = mirrors_from_sources(read_apt_sources())
    return write_layer_tar(build_base_rootfs(lock, os.path.expanduser(cache_dir), mirrors, log), output)


def write_layer_tar(entries: Iterable[Entry], output: str) -> str:
    """Writes the uncompressed layer tar of `entries` at `output` (whole or not at all); returns
    its sha256."""
    directory = os.path.dirname(os.path.abspath(output))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".layer-")
    try:
        with os.fdopen(fd, "wb") as f:
            layers.write_tar(layer_entries(entries), f)
        os.replace(tmp, output)
    except BaseException:
        os.unlink(tmp)
        raise
    digest = hashlib.sha256()
    with open(output, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m ml_image.debian_base", description=__doc__.split("\n")[0])
    parser.add_argument("--lock", default=os.path.join(os.path.dirname(__file__), "debian-base.lock.json"))
    parser.add_argument("--cache", default=DEFAULT_CACHE, help="downloaded .debs, by sha256 (default: %(default)s)")
    parser.add_argument("--output", required=True, help="the uncompressed layer tar to write")
    parser.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="ARCHIVE=URL",
        help="try URL first for ARCHIVE (debian or debian-security), e.g. a snapshot.debian.org "
        "URL once the locked versions have left the mirror; repeatable",
    )
    args = parser.parse_args(argv)

    mirrors = mirrors_from_sources(read_apt_sources())
    for spec in reversed(args.mirror):
        archive, sep, url = spec.partition("=")
        if not sep or not re.match(r"^[a-z]+://", url):
            parser.error(f"--mirror expects ARCHIVE=URL, got {spec!r}")
        mirrors.setdefault(archive, []).insert(0, url.rstrip("/"))

    start = time.monotonic()
    try:
        digest = build_base_layer(args.lock, args.cache, args.output, mirrors)
    except DebError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    size = os.path.getsize(args.output)
    print(
        f"wrote {args.output}: {size:,} bytes, sha256:{digest} ({time.monotonic() - start:.1f} s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
