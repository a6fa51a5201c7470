from __future__ import annotations

import io
import json
import tarfile

import pytest

from ml_contract.system_packages import layer_input
from ml_image import maintainer_scripts, system_packages
from ml_image.debian_base import DebError
from ml_image.debian_base_test import ar_archive, directory, locked, member, tar_bytes

BLAS = "/usr/lib/x86_64-linux-gnu/blas/libblas.so.3"
ALT_INSTALL = ("set -e\nupdate-alternatives --install /usr/lib/x86_64-linux-gnu/libblas.so.3 \\\n"
               "    libblas.so.3-x86_64-linux-gnu {path} {priority} \\\n"
               "    --slave /usr/share/man/man1/blas.1.gz blas.1.gz /usr/share/man/man1/x.1.gz\nexit 0\n")


def deb_with(name: str, files: list, **scripts: str) -> bytes:
    control = [member("./control", data=f"Package: {name}\n".encode())]
    control += [member(f"./{script}", mode=0o755, data=text.encode()) for script, text in scripts.items()]
    return ar_archive([("debian-binary", b"2.0\n"), ("control.tar.xz", tar_bytes(control)),
                       ("data.tar.xz", tar_bytes([directory("./"), *files]))])


def lock_of(tmp_path, debs: dict) -> tuple[dict, str]:
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    packages = []
    for name, data in sorted(debs.items()):
        packages.append(locked(name, data))
        (cache / (packages[-1]["sha256"] + ".deb")).write_bytes(data)
    return {"distribution": "bookworm", "architecture": "amd64", "roots": sorted(debs), "packages": packages}, str(cache)


def tree(tmp_path, debs: dict):
    lock, cache = lock_of(tmp_path, debs)
    entries, effects = system_packages.build_tree(lock, cache, {})
    return {e.path: e for e in entries}, effects


def test_alternatives_are_linked_to_the_highest_priority_path(tmp_path) -> None:
    entries, effects = tree(tmp_path, {
        "libblas3": deb_with("libblas3", [member("." + BLAS, data=b"\x7fELF blas")],
                             postinst=ALT_INSTALL.format(path=BLAS, priority=10)),
        "libopenblas0": deb_with("libopenblas0", [member("./usr/lib/x86_64-linux-gnu/openblas/libblas.so.3", data=b"o")],
                                 postinst=ALT_INSTALL.format(path="/usr/lib/x86_64-linux-gnu/openblas/libblas.so.3",
                                                             priority=100)),
    })
    link = entries["usr/lib/x86_64-linux-gnu/libblas.so.3"]
    assert (link.kind, link.linkname) == ("symlink", "/etc/alternatives/libblas.so.3-x86_64-linux-gnu")
    assert entries["etc/alternatives/libblas.so.3-x86_64-linux-gnu"].linkname == "/usr/lib/x86_64-linux-gnu/openblas/libblas.so.3"
    assert "usr/share/man/man1/blas.1.gz" not in entries  # the slave's file is a dropped man page
    assert "alternative libblas.so.3-x86_64-linux-gnu" in effects.notes["libopenblas0"]


def test_creating_users_is_refused_naming_the_package(tmp_path) -> None:
    with pytest.raises(DebError, match="postgres-like: its maintainer scripts create users"):
        tree(tmp_path, {"postgres-like": deb_with("postgres-like", [], postinst="set -e\nadduser --system pg\n"),
                        "fine": deb_with("fine", [member("./usr/bin/fine", data=b"x")])})


def test_unreviewed_postinst_work_is_refused_and_reviewed_work_is_noted(tmp_path) -> None:
    with pytest.raises(DebError, match=r"mystery: its postinst does work that was never reviewed \(mystery-tool --setup\)"):
        tree(tmp_path, {"mystery": deb_with("mystery", [], postinst="#!/bin/sh\nset -e\n# comment\nmystery-tool --setup\n")})
    _, effects = tree(tmp_path, {"unzip": deb_with("unzip", [], postinst="set -e\nupdate-mime\n")})
    assert effects.notes["unzip"] == f"postinst skipped: {maintainer_scripts.REVIEWED['unzip']}"


def test_a_comment_naming_a_user_command_is_not_refused(tmp_path) -> None:
    tree(tmp_path, {"ucf-like": deb_with("ucf-like", [], preinst="set -e\n# dpkg-divert or adduser here would be refused\n")})


def test_libraries_outside_the_default_paths_are_refused(tmp_path) -> None:
    conf = member("./etc/ld.so.conf.d/x86_64-linux-gnu_vendor.conf", data=b"# vendor\n/opt/vendor/lib\n/usr/lib\n")
    with pytest.raises(DebError, match=r"vendor-libs: its shared libraries in /opt/vendor/lib are found only through"):
        tree(tmp_path, {"vendor-libs": deb_with("vendor-libs", [conf], triggers="activate-noawait ldconfig\n")})


def test_r_gets_its_renviron_with_the_default_paper_size(tmp_path) -> None:
    template = b"R_PAPERSIZE_USER=${R_PAPERSIZE}\nR_LIBS_USER=x\n"
    entries, effects = tree(tmp_path, {"r-base-core": deb_with(
        "r-base-core", [member("./usr/lib/R/etc/Renviron.ucf", data=template),
                        member("./usr/lib/R/etc/Renviron", tarfile.SYMTYPE, linkname="/etc/R/Renviron")],
        postinst="set -e\nucf \"$tmpRenviron\" /etc/R/Renviron\n")})
    assert entries["etc/R/Renviron"].data == b"R_PAPERSIZE_USER=${R_PAPERSIZE-'letter'}\nR_LIBS_USER=x\n"
    assert entries["usr/local/lib/R/site-library"].kind == "dir"
    assert effects.notes["r-base-core"] == maintainer_scripts.FIXES["r-base-core"][0]


def test_the_layer_depends_on_the_packages_alone(tmp_path) -> None:
    debs = {"a": deb_with("a", [member("./usr/bin/a", mode=0o755, data=b"a")]),
            "b": deb_with("b", [member("./usr/lib/b.so", data=b"b")])}
    lock, cache = lock_of(tmp_path, debs)
    built = []
    for roots in (["a", "b"], ["b"]):  # two models asking differently for the same closure
        path = tmp_path / f"{len(roots)}.json"
        path.write_text(json.dumps(layer_input({**lock, "roots": roots})))
        out = tmp_path / f"{len(roots)}.tar"
        built.append((system_packages.build_layer(str(path), cache, str(out), mirrors={}, log=io.StringIO()),
                      out.read_bytes()))
    assert built[0] == built[1]
    with tarfile.open(fileobj=io.BytesIO(built[0][1])) as tar:
        names = tar.getnames()
        assert {"usr", "usr/bin/a", "usr/lib/b.so"} <= set(names)
        assert not {"bin", "lib"} & set(names)  # the base's merged-/usr links are not replaced
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
