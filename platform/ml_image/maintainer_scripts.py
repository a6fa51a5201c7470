"""What the maintainer scripts of a model's system packages would have done, done or refused.

Images are built from .debs without dpkg, so no maintainer script ever runs (not as root on the
build host, not in the image). Most of what they do a server does not need (caches rebuilt at
first use, init scripts, debconf answers, desktop menus); some of it a package cannot work
without. Each package's scripts are read, and:

- `update-alternatives --install` (a postinst's usual work) is done: the link, through
  /etc/alternatives/<name>, to the highest-priority path of each name, as dpkg would leave it.
  libblas3/liblapack3 need it: libR.so finds BLAS only through that link.
- the `ldconfig` trigger needs nothing, as long as every shared library is in a directory the
  dynamic linker searches anyway; a package that adds a directory (a file in
  /etc/ld.so.conf.d) is refused, since no ld.so.cache is built.
- creating users or groups (adduser, useradd, systemd-sysusers) is refused: the image's
  /etc/passwd is the base's.
- any other postinst work is refused unless the package was reviewed: REVIEWED says why its
  scripts are not needed, FIXES does the part that is (r-base-core's /etc/R/Renviron).

A preinst or postrm never runs on a fresh install into an empty image except for its `install`
branch, which is checked for users only.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Tuple

from ml_image.debian_base import DebError, Entry, merged_path, open_member

# Postinst work that a model server does not need, per package, with the reason: reviewed by
# reading the scripts of the package versions in the locks of this repository.
REVIEWED: Mapping[str, str] = {
    "coreutils": "links /usr/bin/touch to /bin/touch for systems without merged /usr; the image merges /usr",
    "dash": "ships /bin/sh -> dash itself; its postinst moves /bin/sh between dash and bash with "
            "dpkg-divert, and there is no bash to move it from",
    "debianutils": "lists login shells in /etc/shells (nothing logs in to a container); its `which` "
                   "alternative is made from its update-alternatives line",
    "fontconfig": "rebuilds the font cache (fc-cache): fontconfig scans the fonts when it has none",
    "fontconfig-config": "links a hinting style chosen through debconf: without it, fontconfig's default",
    "libglib2.0-0": "compiles GSettings schemas and the GIO module cache, for desktop programs",
    "libpaper1": "writes /etc/papersize from debconf: libpaper falls back to its default size",
    "ucf": "creates ucf's own bookkeeping files (configuration-file upgrades)",
    "unzip": "registers MIME types for desktops (update-mime)",
    "x11-common": "starts an init script: a container has no init",
    "xdg-utils": "its only effect, the `open` alternative, is made from its update-alternatives line",
}

_USERS = re.compile(r"\b(adduser|addgroup|useradd|groupadd|systemd-sysusers)\b")
_TRIVIAL = re.compile(r"^(set -e|exit 0|#DEBHELPER#)$")


@dataclass(frozen=True)
class Alternative:
    link: str  # e.g. usr/lib/x86_64-linux-gnu/libblas.so.3 (relative to the root, like Entry.path)
    name: str
    path: str
    priority: int
    package: str


@dataclass
class Scripts:
    """One package's maintainer scripts and triggers (the control.tar members that matter)."""

    package: str
    postinst: str = ""
    preinst: str = ""
    triggers: str = ""


@dataclass
class Effects:
    entries: List[Entry] = field(default_factory=list)  # links and files to add to the layer
    notes: Dict[str, str] = field(default_factory=dict)  # package -> what was done or skipped


def read_scripts(deb: bytes, package: str) -> Scripts:
    scripts = Scripts(package)
    with open_member(deb, "control.tar", package) as tar:
        for member in tar:
            name = posixpath.basename(member.name)
            if name in ("postinst", "preinst", "triggers") and member.isreg():
                text = tar.extractfile(member).read().decode("utf-8", errors="replace")  # type: ignore[union-attr]
                setattr(scripts, name, text)
    return scripts


def _logical_lines(script: str) -> List[str]:
    """Lines without comments and blanks, backslash continuations joined."""
    lines, current = [], ""
    for raw in script.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")) and line != "#DEBHELPER#":
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append((current + line).strip())
        current = ""
    if current:
        lines.append(current.strip())
    return lines


def alternatives_of(scripts: Scripts) -> List[Alternative]:
    """Every `update-alternatives --install link name path priority [--slave link name path]...`."""
    found = []
    for line in _logical_lines(scripts.postinst):
        if "update-alternatives" not in line or "--install" not in line:
            continue
        words = shlex.split(line.split(";")[0])
        words = words[words.index("--install") + 1:]
        if len(words) < 4 or not words[3].isdigit():
            raise DebError(f"{scripts.package}: cannot read its update-alternatives line: {line}")
        link, name, path, priority = words[:4]
        found.append(Alternative(merged_path(link), name, merged_path(path), int(priority), scripts.package))
        rest = words[4:]
        while len(rest) >= 4 and rest[0] == "--slave":
            found.append(Alternative(merged_path(rest[1]), rest[2], merged_path(rest[3]), int(priority),
                                     scripts.package))
            rest = rest[4:]
    return found


def _other_postinst_work(scripts: Scripts) -> List[str]:
    return [line for line in _logical_lines(scripts.postinst)
            if not _TRIVIAL.match(line) and not ("update-alternatives" in line and "--install" in line)]


def _r_renviron(entries: Mapping[str, Entry]) -> List[Entry]:
    """r-base-core's postinst makes /etc/R/Renviron (R reads it at every start, through
    /usr/lib/R/etc/Renviron) from Renviron.ucf, with the paper size libpaper would give."""
    template = entries.get("usr/lib/R/etc/Renviron.ucf")
    if template is None or template.kind != "file":
        raise DebError("r-base-core: no /usr/lib/R/etc/Renviron.ucf to make /etc/R/Renviron from")
    text = re.sub(r"^R_PAPERSIZE_USER=\$\{R_PAPERSIZE\}", "R_PAPERSIZE_USER=${R_PAPERSIZE-'letter'}",
                  template.data.decode("utf-8"), flags=re.MULTILINE)
    return [
        Entry("etc/R/Renviron", "file", 0o644, text.encode("utf-8"), package="r-base-core"),
        Entry("usr/local/lib/R/site-library", "dir", 0o755, package="r-base-core"),
    ]


# Postinst work a package needs, done here instead: package -> (what, how).
FIXES: Mapping[str, Tuple[str, Callable[[Mapping[str, Entry]], List[Entry]]]] = {
    "r-base-core": ("/etc/R/Renviron made from Renviron.ucf, as its postinst would", _r_renviron),
}
DEFAULT_LIBRARY_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib", "lib/x86_64-linux-gnu", "lib")


def effects(scripts: List[Scripts], entries: Mapping[str, Entry]) -> Effects:
    """What to add to the layer for `scripts`, given the layer's `entries`; raises DebError
    naming every package it refuses and why."""
    result = Effects()
    refused = []
    for s in sorted(scripts, key=lambda s: s.package):
        if any(_USERS.search(line) for line in _logical_lines(s.postinst) + _logical_lines(s.preinst)):
            refused.append(f"{s.package}: its maintainer scripts create users or groups, which an "
                           "image built without dpkg cannot do")
            continue
        other = _other_postinst_work(s)
        if s.package in FIXES:
            what, fix = FIXES[s.package]
            result.entries += fix(entries)
            result.notes[s.package] = what
        elif other and s.package not in REVIEWED:
            shown = "; ".join(other[:6]) + (" ..." if len(other) > 6 else "")
            refused.append(f"{s.package}: its postinst does work that was never reviewed ({shown})")
            continue
        elif other:
            result.notes[s.package] = f"postinst skipped: {REVIEWED[s.package]}"
    for path, entry in entries.items():
        if path.startswith("etc/ld.so.conf.d/") and entry.kind == "file":
            extra = [d.strip().lstrip("/") for d in entry.data.decode("utf-8", "replace").splitlines()
                     if d.strip() and not d.strip().startswith("#")]
            unusual = [d for d in extra if d.rstrip("/") not in DEFAULT_LIBRARY_DIRS]
            if unusual:
                refused.append(f"{entry.package}: its shared libraries in {', '.join('/' + d for d in unusual)} "
                               f"are found only through ldconfig's cache (/{path}), which is not built")
    if refused:
        raise DebError("these system packages need maintainer scripts that cannot run here:\n  "
                       + "\n  ".join(refused)
                       + "\nDrop them (or the package that depends on them) from `system_packages`; "
                       "if a package works without its scripts, add it to REVIEWED in "
                       "platform/ml_image/maintainer_scripts.py with the reason.")
    result.entries += _alternative_links([a for s in scripts for a in alternatives_of(s)], entries, result.notes)
    return result


def _alternative_links(alternatives: List[Alternative], entries: Mapping[str, Entry],
                       notes: Dict[str, str]) -> List[Entry]:
    # The best of each name, as `update-alternatives --auto` picks: highest priority, then path.
    best: Dict[str, Alternative] = {}
    for alt in sorted(alternatives, key=lambda a: (a.name, -a.priority, a.path)):
        best.setdefault(alt.name, alt)
    links = []
    for name, alt in sorted(best.items()):
        if alt.path not in entries:
            continue  # a slave for a dropped file (a man page)
        links += [
            Entry(f"etc/alternatives/{name}", "symlink", 0o777, linkname="/" + alt.path, package=alt.package),
            Entry(alt.link, "symlink", 0o777, linkname=f"/etc/alternatives/{name}", package=alt.package),
        ]
        done = f"alternative {name}: /{alt.link} -> /{alt.path}"
        notes[alt.package] = f"{notes[alt.package]}; {done}" if alt.package in notes else done
    return links
