"""Resolve, download (with a cache) and unpack Debian packages via the host's apt.

Only ``apt-cache``, ``apt-get download`` and ``dpkg-deb -x`` are used: nothing is ever
installed on the host. Downloaded files are checked against the SHA256 apt publishes,
so a cached .deb is reused only when it is exactly the candidate version.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cloudlet.errors import HostCommandError, NotFound
from cloudlet.host.run import run, which

_APT_HINT = "check the apt sources and run apt-get update"


@dataclass(frozen=True)
class Deb:
    """One resolved package: the candidate version apt would fetch."""

    package: str
    version: str
    arch: str
    sha256: str

    @property
    def filename(self) -> str:
        """The file name ``apt-get download`` gives this package."""
        return (
            f"{apt_quote(self.package, '_:')}_{apt_quote(self.version, '_:')}_"
            f"{apt_quote(self.arch, '_:.')}.deb"
        )


def apt_quote(text: str, bad: str) -> str:
    """apt's QuoteString: %-escape '%', the ``bad`` characters and non-printables."""
    out = []
    for ch in text:
        if ch == "%" or ch in bad or ord(ch) <= 0x20 or ord(ch) >= 0x7F:
            out.append("".join(f"%{b:02x}" for b in ch.encode()))
        else:
            out.append(ch)
    return "".join(out)


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """Parse deb822 paragraphs (``apt-cache show`` output); continuation lines are kept."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
        elif line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


DependsGraph = dict[str, list[list[str]]]


def parse_depends_graph(text: str) -> DependsGraph:
    """``apt-cache depends --recurse`` output as package -> groups of alternatives.

    A group is a list of names that each satisfy one Depends line ("a | b"); a virtual
    package (``<name>``) is replaced by the packages that provide it.
    """
    graph: DependsGraph = {}
    current: list[list[str]] | None = None
    continues = False  # the previous Depends line ended with "|"
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0] not in " \t":
            name = line.strip()
            current = None if name.startswith("<") else graph.setdefault(name, [])
            continues = False
            continue
        if current is None:
            continue
        stripped = line.strip()
        if line.startswith("    "):  # a provider of the virtual package just listed
            if current and stripped not in current[-1]:
                current[-1].append(stripped)
            continue
        alternative = stripped.startswith("|")
        label, _, value = stripped.lstrip("|").partition(":")
        if label != "Depends":
            continue
        value = value.strip()
        names = [] if value.startswith("<") else [value.split(":")[0]]
        if continues and current:
            current[-1].extend(names)
        else:
            current.append(names)
        continues = alternative
    return graph


def depends_closure(graph: DependsGraph, roots: Iterable[str]) -> list[str]:
    """The roots and everything they depend on, taking the first alternative of each group."""
    order: list[str] = []
    todo = list(roots)
    while todo:
        name = todo.pop(0)
        if name in order:
            continue
        order.append(name)
        for group in graph.get(name, []):
            if group:
                todo.append(group[0])
    return order


_DEP_FLAGS = (
    "--no-recommends",
    "--no-suggests",
    "--no-conflicts",
    "--no-breaks",
    "--no-replaces",
    "--no-enhances",
    "--no-pre-depends",
)


class Apt:
    """The host's apt, used read-only plus ``apt-get download``.

    With ``state_dir`` apt keeps its own package lists there (for a foreign
    architecture such as arm64 on an amd64 host), built from the host's Debian
    sources: the host's apt configuration and state are never touched.
    """

    def __init__(self, deb_arch: str, *, state_dir: Path | None = None) -> None:
        self.deb_arch = deb_arch
        hint = "this builder needs Debian's apt (apt-get, apt-cache)"
        self.apt_get = which("apt-get", hint=hint)
        self.apt_cache = which("apt-cache", hint=hint)
        self.dpkg_deb = which("dpkg-deb", hint="install dpkg")
        self.state_dir = state_dir
        self.options: list[str] = []
        if state_dir is not None:
            self.options = private_apt_options(deb_arch, state_dir)

    def update(self) -> None:
        """Refresh the private package lists from the host's Debian sources.

        Offline, lists from an earlier update are used as they are; without any,
        nothing could be resolved, so that is an error.
        """
        if self.state_dir is None:
            return
        targets = run(
            [self.apt_get, "indextargets", "--format",
             "$(TARGET_OF)\t$(ORIGIN)\t$(REPO_URI)\t$(RELEASE)\t$(COMPONENT)"],
            hint=_APT_HINT,
        ).stdout.decode()  # fmt: skip
        sources = debian_sources(targets)
        if not sources:
            raise NotFound("the host's apt has no Debian package lists", hint=_APT_HINT)
        lists = self.state_dir / "lists"
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "sources.list.d").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "sources.list").write_text(sources)
        proc = run([self.apt_get, "-q", *self.options, "update"], check=False, timeout=600)
        if proc.returncode != 0 and not any(lists.glob("*_Packages*")):
            raise HostCommandError(
                ["apt-get", "update", f"({self.deb_arch}, private lists)"],
                proc.returncode,
                stderr=proc.stderr.decode(errors="replace"),
                hint=_APT_HINT,
            )

    def _q(self, name: str) -> str:
        return f"{name}:{self.deb_arch}"

    def depends_graph(self, packages: Iterable[str]) -> DependsGraph:
        """Run-time dependencies (Depends, recursively, no Pre-Depends) of packages.

        One apt-cache call for everything: without a cached pkgcache.bin each call
        costs about a second.
        """
        out = run(
            [self.apt_cache, *self.options, "depends", "--recurse", *_DEP_FLAGS,
             *(self._q(p) for p in packages)],
            hint=_APT_HINT,
        ).stdout.decode()  # fmt: skip
        return {k.split(":")[0]: v for k, v in parse_depends_graph(out).items()}

    def resolve(self, packages: Sequence[str]) -> list[Deb]:
        """The candidate version of each package, with its published SHA256."""
        proc = run(
            [
                self.apt_cache,
                *self.options,
                "show",
                "--no-all-versions",
                *(self._q(p) for p in packages),
            ],
            check=False,
        )
        if proc.returncode != 0:
            detail = proc.stderr.decode(errors="replace").strip().splitlines()
            raise NotFound(
                f"apt cannot find a package: {detail[-1] if detail else packages}",
                hint=_APT_HINT,
            )
        by_name: dict[str, Deb] = {}
        for st in parse_stanzas(proc.stdout.decode()):
            if "Package" in st and st["Package"] not in by_name:
                by_name[st["Package"]] = Deb(
                    st["Package"], st["Version"], st["Architecture"], st.get("SHA256", "")
                )
        missing = [p for p in packages if p not in by_name]
        if missing:
            raise NotFound(f"apt has no candidate for {', '.join(missing)}", hint=_APT_HINT)
        return [by_name[p] for p in packages]

    def fetch(self, debs: Sequence[Deb], cache: Path) -> dict[str, Path]:
        """Make sure each .deb is in ``cache`` (verified); download only what is missing."""
        cache.mkdir(parents=True, exist_ok=True)
        missing = [d for d in debs if not _verified(cache / d.filename, d.sha256)]
        if missing:
            tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
            try:
                _let_apt_sandbox_write(tmp)
                run(
                    [
                        self.apt_get,
                        *self.options,
                        "download",
                        "-q",
                        *(f"{d.package}:{self.deb_arch}={d.version}" for d in missing),
                    ],
                    cwd=tmp,
                    timeout=1800,
                    hint=_APT_HINT,
                )
                for d in missing:
                    got = tmp / d.filename
                    if not _verified(got, d.sha256):
                        raise HostCommandError(
                            ["apt-get", "download", d.package],
                            0,
                            stderr=f"{d.filename} missing or its SHA256 does not match",
                            hint=_APT_HINT,
                        )
                    if os.geteuid() == 0:
                        os.chown(got, 0, 0)
                    os.replace(got, cache / d.filename)
                    _prune_other_versions(cache, d)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return {d.package: cache / d.filename for d in debs}

    def unpack(self, deb: Path, dest: Path) -> None:
        """Extract a package's files (never its maintainer scripts) into ``dest``."""
        dest.mkdir(parents=True, exist_ok=True)
        run([self.dpkg_deb, "-x", deb, dest])


def _prune_other_versions(cache: Path, deb: Deb) -> None:
    """Drop superseded versions of a package so the cache does not grow forever.

    Only the same architecture: amd64 and arm64 libc6 live side by side.
    """
    prefix = apt_quote(deb.package, "_:") + "_"  # package names never contain "_"
    suffix = "_" + apt_quote(deb.arch, "_:.") + ".deb"
    for old in cache.glob(f"{prefix}*{suffix}"):
        if old.name != deb.filename:
            old.unlink(missing_ok=True)


def private_apt_options(deb_arch: str, state_dir: Path) -> list[str]:
    """apt options for lists, cache and sources of its own, for one architecture only.

    The status file is /dev/null: nothing counts as installed, which is right for
    packages that are only ever unpacked.
    """
    return [
        "-o", f"APT::Architecture={deb_arch}",
        "-o", f"APT::Architectures::={deb_arch}",
        "-o", f"Dir::State::Lists={state_dir / 'lists'}",
        "-o", f"Dir::Cache={state_dir / 'cache'}",
        "-o", "Dir::State::Status=/dev/null",
        "-o", f"Dir::Etc::SourceList={state_dir / 'sources.list'}",
        "-o", f"Dir::Etc::SourceParts={state_dir / 'sources.list.d'}",
    ]  # fmt: skip


_DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


def debian_sources(indextargets: str, keyring: Path | None = _DEBIAN_KEYRING) -> str:
    """A one-line-style sources.list of the host's Debian repositories.

    Input is ``apt-get indextargets`` output in the format
    TARGET_OF, ORIGIN, REPO_URI, RELEASE, COMPONENT (tab separated). Only Debian's
    own repositories are kept: third-party ones rarely carry a foreign architecture.
    """
    repos: dict[tuple[str, str], list[str]] = {}
    for line in indextargets.splitlines():
        fields = line.split("\t")
        if len(fields) != 5:
            continue
        target_of, origin, uri, release, component = fields
        if target_of != "deb" or origin != "Debian":
            continue
        components = repos.setdefault((uri, release), [])
        if component not in components:
            components.append(component)
    signed = f"[signed-by={keyring}] " if keyring is not None and keyring.is_file() else ""
    return "".join(
        f"deb {signed}{uri} {release} {' '.join(components)}\n"
        for (uri, release), components in repos.items()
    )


def _let_apt_sandbox_write(directory: Path) -> None:
    """As root, apt downloads as the unprivileged _apt user, who must own the target."""
    os.chmod(directory, 0o755)
    if os.geteuid() != 0:
        return
    try:
        import pwd

        os.chown(directory, pwd.getpwnam("_apt").pw_uid, -1)
    except (KeyError, OSError):
        pass  # apt then downloads unsandboxed, with a warning


def _verified(path: Path, sha256: str) -> bool:
    if not path.is_file():
        return False
    if not sha256:
        return True
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == sha256
