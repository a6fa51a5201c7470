from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from ml_image import debian_base, debian_lock, layers
from ml_image.debian_base import DebError, Entry

LOCK = Path(__file__).parent / "debian-base.lock.json"


# ----------------------------------------------------------------------------------------------
# Building .debs in memory


def ar_archive(members: List[Tuple[str, bytes]]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode("ascii")
        assert len(header) == 60
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def tar_bytes(members: List[Tuple[tarfile.TarInfo, Optional[bytes]]], mode: str = "w:xz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, linkname: str = "", data: Optional[bytes] = None):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, linkname
    info.mtime, info.uid, info.gid, info.uname, info.gname = 1700000000, 0, 0, "root", "root"
    return info, data


def directory(name: str):
    return member(name, tarfile.DIRTYPE, 0o755)


def deb(data_members, data_name: str = "data.tar.xz") -> bytes:
    control = tar_bytes([member("./control", data=b"Package: x\n")])
    data = tar_bytes(data_members) if data_name.endswith(".xz") else b"not read"
    return ar_archive([("debian-binary", b"2.0\n"), ("control.tar.xz", control), (data_name, data)])


LIBC_LIKE = [
    directory("./"),
    directory("./lib/"),
    directory("./lib/x86_64-linux-gnu/"),
    member("./lib/x86_64-linux-gnu/libc.so.6", mode=0o755, data=b"\x7fELF libc"),
    directory("./lib64/"),
    member("./lib64/ld-linux-x86-64.so.2", tarfile.SYMTYPE, linkname="/lib/x86_64-linux-gnu/ld.so"),
    member("./lib/x86_64-linux-gnu/ld.so", mode=0o755, data=b"\x7fELF ld"),
    member("./lib/x86_64-linux-gnu/libfoo.so.1", tarfile.SYMTYPE, linkname="../../usr/lib/libfoo.so.1.2"),
    directory("./usr/"),
    directory("./usr/lib/"),
    member("./usr/lib/libfoo.so.1.2", data=b"foo"),
    member("./usr/bin/tool", mode=0o755, data=b"#!tool"),
    # Hard links sorting before their target, and one whose target is a dropped doc file.
    member("./usr/bin/tool-b", tarfile.LNKTYPE, 0o755, linkname="./usr/bin/tool"),
    member("./usr/bin/a-tool", tarfile.LNKTYPE, 0o755, linkname="./usr/bin/tool"),
    member("./usr/share/doc/x/README", data=b"docs"),
    member("./usr/share/x/README", tarfile.LNKTYPE, linkname="./usr/share/doc/x/README"),
    member("./usr/share/man/man1/tool.1.gz", data=b"man"),
    member("./dev/null", tarfile.CHRTYPE, 0o666),
]
PYTHON_LIKE = [
    directory("./usr/bin/"),
    member("./usr/bin/python3.11", mode=0o755, data=b"\x7fELF python"),
    member("./usr/share/ca-certificates/mozilla/B.crt", data=b"-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----"),
    member("./usr/share/ca-certificates/mozilla/A.crt", data=b"-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n"),
    directory("./lib/"),  # also shipped by libc: shared directories merge
]


def locked(name: str, data: bytes, archive: str = "debian") -> dict:
    return {
        "name": name,
        "version": "1.0-1",
        "architecture": "amd64",
        "archive": archive,
        "path": f"pool/main/{name[0]}/{name}/{name}_1.0-1_amd64.deb",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


@pytest.fixture
def cached_lock(tmp_path):
    """A lock of two fake packages whose .debs are already in the cache: no network."""
    cache = tmp_path / "cache"
    cache.mkdir()
    packages = []
    for name, members in (("libc-like", LIBC_LIKE), ("python-like", PYTHON_LIKE)):
        data = deb(members)
        packages.append(locked(name, data))
        (cache / (packages[-1]["sha256"] + ".deb")).write_bytes(data)
    lock = {"distribution": "bookworm", "architecture": "amd64", "python_version": "3.11.2", "packages": packages}
    return lock, str(cache)


def layer_bytes(lock, cache) -> bytes:
    out = io.BytesIO()
    layers.write_tar(debian_base.layer_entries(debian_base.build_base_rootfs(lock, cache, {})), out)
    return out.getvalue()


# ----------------------------------------------------------------------------------------------
# ar and data.tar


def test_read_ar_members_and_padding():
    archive = ar_archive([("debian-binary", b"2.0\n"), ("odd/", b"abc"), ("after", b"z")])
    assert debian_base.read_ar(archive) == [("debian-binary", b"2.0\n"), ("odd", b"abc"), ("after", b"z")]


def test_read_ar_bsd_long_names():
    archive = ar_archive([("#1/20", b"data.tar.xz".ljust(20, b"\0") + b"payload")])
    assert debian_base.read_ar(archive) == [("data.tar.xz", b"payload")]


def test_read_ar_rejects_other_files():
    with pytest.raises(DebError, match="not an ar archive"):
        debian_base.read_ar(b"PK\x03\x04")


def test_zstd_data_fails_clearly():
    with pytest.raises(DebError, match=r"pkg: data\.tar\.zst is zstd-compressed"):
        list(debian_base.deb_entries(deb([], data_name="data.tar.zst"), "pkg"))


def test_deb_entries_merge_usr_and_drop_docs():
    entries = {e.path: e for e in debian_base.deb_entries(deb(LIBC_LIKE), "libc-like")}
    assert entries["usr/lib/x86_64-linux-gnu/libc.so.6"].data == b"\x7fELF libc"
    assert entries["usr/lib/x86_64-linux-gnu/libc.so.6"].mode == 0o755
    # Absolute targets resolve through the /lib -> usr/lib link; relative ones are re-aimed.
    assert entries["usr/lib64/ld-linux-x86-64.so.2"].linkname == "/lib/x86_64-linux-gnu/ld.so"
    assert entries["usr/lib/x86_64-linux-gnu/libfoo.so.1"].linkname == "../libfoo.so.1.2"
    assert not any(p.startswith(("lib/", "lib64", "usr/share/doc", "usr/share/man", "dev")) for p in entries)
    assert entries["usr/share/x/README"].kind == "hardlink"
    assert entries["usr/share/x/README"].data == b"docs"


# ----------------------------------------------------------------------------------------------
# The root filesystem and its tar


def test_layer_is_deterministic(cached_lock):
    lock, cache = cached_lock
    first = layer_bytes(lock, cache)
    assert layer_bytes(lock, cache) == first
    reversed_lock = dict(lock, packages=list(reversed(lock["packages"])))
    assert layer_bytes(reversed_lock, cache) == first


def test_layer_entries(cached_lock, tmp_path):
    lock, cache = cached_lock
    with tarfile.open(fileobj=io.BytesIO(layer_bytes(lock, cache))) as tar:
        members = tar.getmembers()
        by_name = {m.name: m for m in members}
        names = [m.name for m in members]
        assert names == sorted(names)
        assert all(m.mtime == 0 and m.uname == "" and m.gname == "" for m in members)
        assert all(m.uid == 0 for m in members if m.name != "home/nonroot")
        assert (by_name["home/nonroot"].uid, by_name["home/nonroot"].gid) == (65532, 65532)
        assert by_name["tmp"].isdir() and by_name["tmp"].mode == 0o1777
        for top in ("bin", "sbin", "lib", "lib64"):
            assert by_name[top].issym() and by_name[top].linkname == "usr/" + top
        assert by_name["usr/bin/python3"].linkname == "python3.11"
        assert not any(m.ischr() or m.isblk() or m.isfifo() for m in members)

        passwd = tar.extractfile("etc/passwd").read().decode()
        assert "nonroot:x:65532:65532::/home/nonroot:/usr/sbin/nologin" in passwd
        assert "nonroot:x:65532:" in tar.extractfile("etc/group").read().decode()
        assert "hosts: files dns" in tar.extractfile("etc/nsswitch.conf").read().decode()
        os_release = tar.extractfile("etc/os-release").read().decode()
        assert "ID=debian" in os_release and "distroless" in os_release
        bundle = tar.extractfile("etc/ssl/certs/ca-certificates.crt").read()
        assert re.findall(rb"\n([AB])\n", bundle) == [b"A", b"B"]
        assert bundle.count(b"-----END CERTIFICATE-----\n") == 2

        # Hard links: the first path in sort order holds the data, later ones link to it.
        assert by_name["usr/bin/a-tool"].isreg()
        assert by_name["usr/bin/tool"].islnk() and by_name["usr/bin/tool"].linkname == "usr/bin/a-tool"
        assert by_name["usr/bin/tool-b"].linkname == "usr/bin/a-tool"
        assert by_name["usr/share/x/README"].isreg()  # its target, under usr/share/doc, is dropped

        trusted = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
        tar.extractall(tmp_path / "root", **trusted)
    root = tmp_path / "root"
    assert (root / "usr/bin/tool-b").read_bytes() == b"#!tool"
    assert os.stat(root / "usr/bin/tool").st_ino == os.stat(root / "usr/bin/a-tool").st_ino
    assert os.readlink(root / "lib64/ld-linux-x86-64.so.2") == "/lib/x86_64-linux-gnu/ld.so"
    assert (root / "lib/x86_64-linux-gnu/libfoo.so.1").read_bytes() == b"foo"


def test_conflicting_files_are_an_error(tmp_path):
    entries = {}
    debian_base.merge_entries([Entry("etc/x", "file", 0o644, b"1", package="a")], entries)
    debian_base.merge_entries([Entry("etc/x", "file", 0o644, b"1", package="b")], entries)
    with pytest.raises(DebError, match="etc/x is shipped differently by a and c"):
        debian_base.merge_entries([Entry("etc/x", "file", 0o644, b"2", package="c")], entries)


# ----------------------------------------------------------------------------------------------
# Downloads and verification


def test_sha256_mismatch_names_package_and_both_digests():
    package = locked("libfoo1", b"right bytes")
    with pytest.raises(DebError) as error:
        debian_base.verify_deb(package, b"wrong bytes", "http://mirror/x.deb")
    message = str(error.value)
    assert message.startswith("libfoo1 1.0-1: sha256 mismatch (from http://mirror/x.deb)")
    assert package["sha256"] in message and hashlib.sha256(b"wrong bytes").hexdigest() in message


def test_size_mismatch():
    with pytest.raises(DebError, match="libfoo1 1.0-1: size mismatch: expected 11 bytes, got 3"):
        debian_base.verify_deb(locked("libfoo1", b"right bytes"), b"abc")


def test_fetch_downloads_into_cache_then_reuses_it(tmp_path):
    data = deb(PYTHON_LIKE)
    package = locked("python-like", data, archive="debian-security")
    mirror = tmp_path / "mirror"
    (mirror / package["path"]).parent.mkdir(parents=True)
    (mirror / package["path"]).write_bytes(data)
    mirrors = {"debian-security": [(tmp_path / "missing").as_uri(), mirror.as_uri()]}
    log = io.StringIO()
    cache = tmp_path / "cache"

    assert debian_base.fetch_deb(package, str(cache), mirrors, log) == data
    assert (cache / (package["sha256"] + ".deb")).read_bytes() == data
    assert log.getvalue().count("fetch python-like 1.0-1") == 2  # the first mirror lacks it
    assert [p.name for p in cache.iterdir()] == [package["sha256"] + ".deb"]

    (mirror / package["path"]).unlink()
    assert debian_base.fetch_deb(package, str(cache), mirrors, io.StringIO()) == data

    (cache / (package["sha256"] + ".deb")).write_bytes(b"corrupted")
    with pytest.raises(DebError, match="python-like 1.0-1: size mismatch"):
        debian_base.fetch_deb(package, str(cache), mirrors, io.StringIO())


def test_fetch_reports_every_mirror_tried(tmp_path):
    package = locked("libbar", b"x")
    with pytest.raises(DebError, match=r"libbar 1.0-1: cannot download from the 'debian' archive: .*nowhere"):
        debian_base.fetch_deb(package, str(tmp_path), {"debian": [(tmp_path / "nowhere").as_uri()]}, io.StringIO())


# ----------------------------------------------------------------------------------------------
# apt sources

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Enabled: no
"""

ONE_LINE = """\
# a comment
deb [arch=amd64 signed-by=/usr/share/keyrings/debian.gpg] http://one.example/debian bookworm main contrib
deb-src http://src.example/debian bookworm main
deb http://one.example/debian-security bookworm-security main  # trailing comment
"""


def test_parse_deb822_sources():
    sources = debian_base.parse_deb822_sources(DEB822)
    assert [(s.types, s.uris, s.suites) for s in sources] == [
        (["deb"], ["http://mirror.example/debian/"], ["bookworm", "bookworm-updates"]),
        (["deb", "deb-src"], ["http://mirror.example/debian-security"], ["bookworm-security"]),
    ]
    assert [s.archive for s in sources] == ["debian", "debian-security"]


def test_parse_one_line_sources():
    sources = debian_base.parse_one_line_sources(ONE_LINE)
    assert [(s.types, s.uris, s.suites, s.components) for s in sources] == [
        (["deb"], ["http://one.example/debian"], ["bookworm"], ["main", "contrib"]),
        (["deb-src"], ["http://src.example/debian"], ["bookworm"], ["main"]),
        (["deb"], ["http://one.example/debian-security"], ["bookworm-security"], ["main"]),
    ]


def test_mirrors_from_apt_configuration(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(ONE_LINE)
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    mirrors = debian_base.mirrors_from_sources(debian_base.read_apt_sources(str(tmp_path)))
    assert mirrors == {
        "debian": ["http://one.example/debian", "http://mirror.example/debian", "http://deb.debian.org/debian"],
        "debian-security": [
            "http://one.example/debian-security",
            "http://mirror.example/debian-security",
            "http://deb.debian.org/debian-security",
        ],
    }
    assert debian_base.mirrors_from_sources([]) == {k: [v] for k, v in debian_base.DEFAULT_MIRRORS.items()}


# ----------------------------------------------------------------------------------------------
# The lock

APT_CACHE_DEPENDS = """\
python3.11-minimal
  PreDepends: libc6
  Depends: zlib1g
libpython3.11-stdlib
 |Depends: media-types
  Depends: mime-support
  Depends: libc6
ca-certificates
  Depends: openssl
 |Depends: debconf
  Depends: <debconf-2.0>
    cdebconf
    debconf
libc6
  Depends: libgcc-s1
zlib1g
  Depends: libc6
media-types
mime-support
  Depends: mailcap
openssl
  Depends: libc6
debconf
  PreDepends: perl-base
cdebconf
  Depends: libc6
libgcc-s1
  Depends: libc6
mailcap
  Depends: perl
perl-base
perl
libc6
  Depends: libgcc-s1
"""


def test_closure_takes_first_alternative_and_stops_at_exclusions():
    depends, providers = debian_lock.parse_apt_cache_depends(APT_CACHE_DEPENDS)
    assert depends["ca-certificates"] == [["openssl"], ["debconf", "<debconf-2.0>"]]
    assert providers == {"debconf-2.0": ["cdebconf", "debconf"]}
    roots = ["python3.11-minimal", "libpython3.11-stdlib", "ca-certificates"]
    assert debian_lock.closure(roots, ["debconf", "perl-base"], depends, providers) == [
        "ca-certificates", "libc6", "libgcc-s1", "libpython3.11-stdlib", "media-types",
        "openssl", "python3.11-minimal", "zlib1g",
    ]
    # Without the exclusion, debconf (the first alternative) comes in, and perl-base with it.
    assert "perl-base" in debian_lock.closure(roots, [], depends, providers)


def test_committed_lock_is_portable():
    lock = json.loads(LOCK.read_text())
    assert lock["distribution"] == "bookworm" and lock["architecture"] == "amd64"
    assert debian_base.base_python_version(str(LOCK)) == lock["python_version"]
    assert re.fullmatch(r"3\.11\.\d+", lock["python_version"])
    names = [p["name"] for p in lock["packages"]]
    assert names == sorted(set(names))
    assert set(lock["roots"]) <= set(names) and not set(lock["excluded"]) & set(names)
    for package in lock["packages"]:
        assert package["archive"] in ("debian", "debian-security")
        assert package["path"].startswith("pool/") and ".." not in package["path"]
        assert package["path"].endswith(f"_{package['architecture']}.deb")
        assert re.fullmatch(r"[0-9a-f]{64}", package["sha256"]) and package["size"] > 0
    assert "://" not in LOCK.read_text()  # mirrors come from the builder's apt configuration
