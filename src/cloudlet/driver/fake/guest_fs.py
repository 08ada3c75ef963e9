"""The fake guest's file system: an in-memory tree that file copies go in and out of.

It stands in for the guest's disk (it outlives a restart of the fake VM) and applies
the same rules as the QEMU driver's agent copy (guest.copy_rules), so a copy that the
real driver refuses is refused here with the same error; what comes out is written
through guest.landing.Landing with the same limits and protections.
"""

from __future__ import annotations

import io
import posixpath
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from cloudlet.errors import EntryRefused, GuestError
from cloudlet.guest import copy_rules as rules
from cloudlet.guest import tree_in, tree_out
from cloudlet.guest.accounts import ROOT, GuestOwner
from cloudlet.guest.copy_rules import CopyProgress, TreeCopy
from cloudlet.guest.landing import CopyLimits, Landing

CHUNK = 256 * 1024
PASSWD = "root:x:0:0:root:/root:/bin/sh\n"
GROUP = "root:x:0:\n"


@dataclass
class FakeFile:
    mode: int  # permission bits, setuid and all, as the guest keeps them
    data: bytes
    owner: GuestOwner = ROOT


def _accounts() -> dict[str, FakeFile]:
    return {
        "/etc/passwd": FakeFile(0o644, PASSWD.encode()),
        "/etc/group": FakeFile(0o644, GROUP.encode()),
    }


@dataclass
class FakeGuestFS:
    """Directories, regular files and symlinks by absolute, normalised path.

    Links are kept as text and never followed (test hooks make them, tree copies
    carry them). ``tar_output`` stands in for a compromised tar in the guest: the
    archive a copy out of that path gets, whatever the tree holds.
    """

    dirs: set[str] = field(default_factory=lambda: {"/", "/root", "/tmp", "/etc", "/dev"})
    files: dict[str, FakeFile] = field(default_factory=_accounts)
    links: dict[str, str] = field(default_factory=dict)
    owners: dict[str, GuestOwner] = field(default_factory=dict)  # directories made by copies
    tar_output: dict[str, bytes] = field(default_factory=dict)

    def exists(self, path: str) -> bool:
        return path in self.dirs or path in self.files or path in self.links

    def owner(self, path: str) -> GuestOwner:
        """Test hook: who owns an entry (as ls -ln would say)."""
        path = posixpath.normpath(path)
        found = self.files.get(path)
        return found.owner if found is not None else self.owners.get(path, ROOT)

    def is_dir(self, path: str) -> bool:
        return posixpath.normpath(path) in self.dirs

    def read(self, path: str) -> bytes | None:
        """A file's bytes (a symlink is followed, as cat would), or None."""
        path = posixpath.normpath(path)
        for _ in range(40):  # the kernel's limit on links in one lookup
            if path not in self.links:
                break
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), self.links[path]))
        found = self.files.get(path)
        return None if found is None else found.data

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Test hook: what a guest program would have written (parents are made)."""
        path = posixpath.normpath(path)
        parent = posixpath.dirname(path)
        while parent not in self.dirs:
            self.dirs.add(parent)
            parent = posixpath.dirname(parent)
        self.files[path] = FakeFile(mode, data)

    def copy_in(
        self,
        src: Path,
        dest: str,
        progress: CopyProgress | None,
        mode: int | None,
        owner: GuestOwner | None = None,
    ) -> int:
        st = rules.host_source(src)
        rules.check_guest_path(dest)
        target = rules.guest_target(dest, src.name, not dest.endswith("/") and self.is_dir(dest))
        target = posixpath.normpath(target)
        parent = posixpath.dirname(target)
        if parent not in self.dirs:
            raise rules.guest_missing(parent)
        if target in self.dirs:
            raise GuestError(
                f"cannot rename {target}{rules.GUEST_PART_SUFFIX} to {target} in the guest: "
                "it is a directory",
                hint="check the guest's permissions and free space",
            )
        total, chunks = st.st_size, []
        rules.report(progress, 0, total)
        with open(src, "rb") as source:
            while data := source.read(CHUNK):
                chunks.append(data)
                done = sum(map(len, chunks))
                rules.report(progress, done, max(total, done))
        self.files[target] = FakeFile(
            stat.S_IMODE(st.st_mode) if mode is None else mode, b"".join(chunks), owner or ROOT
        )
        return len(self.files[target].data)

    def copy_out(
        self, src: str, dest: Path, progress: CopyProgress | None, limits: CopyLimits | None
    ) -> int:
        rules.check_guest_path(src)
        path = posixpath.normpath(src)
        found = self.files.get(path)
        if path in self.dirs:
            guest_mode = stat.S_IFDIR | 0o755
        elif found is not None:
            guest_mode = stat.S_IFREG | found.mode
        else:
            raise rules.guest_missing(src)
        rules.guest_source_kind(src, guest_mode)
        assert found is not None
        target = rules.host_target(src, dest)
        bounds = limits or CopyLimits()
        if len(found.data) > bounds.max_bytes:
            Landing.too_large(bounds)
        reader = _Reader(found.data, progress)
        with Landing(target.parent, bounds) as landing:
            rules.report(progress, 0, len(found.data))
            try:
                landing.file((target.name,), guest_mode, reader.read)
            except EntryRefused as exc:
                raise rules.cannot_write(target, exc.message) from None
        return reader.done

    # ------------------------------------------------------------------ trees
    def copy_tree_in(
        self, src: Path, dest: str, progress: CopyProgress | None, owner: GuestOwner | None
    ) -> TreeCopy:
        if src.is_file():
            return TreeCopy(self.copy_in(src, dest, progress, None, owner), 1, 0)
        tree = tree_in.scan(src)
        rules.check_guest_path(dest)
        target = rules.guest_tree_target(dest, src, not dest.endswith("/") and self.is_dir(dest))
        if self.exists(target):
            raise rules.guest_exists(target)
        if posixpath.dirname(target) not in self.dirs:
            raise rules.guest_missing(posixpath.dirname(target))
        stream = io.BytesIO()
        sent = tree_in.write_tar(tree, stream, owner or ROOT, progress)
        stream.seek(0)
        # The guest's tar unpacks what the host checked: trusted here as it is there.
        with tarfile.open(fileobj=stream, mode="r:") as tar:
            for member in tar:
                rel = member.name.split("/", 1)[1] if "/" in member.name else ""
                path = posixpath.join(target, rel) if rel else target
                who = GuestOwner(member.uid, member.gid)
                if member.isdir():
                    self.dirs.add(path)
                    self.owners[path] = who
                elif member.issym():
                    self.links[path] = member.linkname
                elif member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None
                    self.files[path] = FakeFile(member.mode, source.read(), who)
                elif member.islnk():
                    first = posixpath.join(target, member.linkname.split("/", 1)[1])
                    self.files[path] = self.files[first]
        return TreeCopy(sent, tree.files, tree.dirs)

    def copy_tree_out(
        self, src: str, dest: Path, progress: CopyProgress | None, limits: CopyLimits | None
    ) -> TreeCopy:
        path = rules.guest_tree_source(src)
        if path in self.files:
            return TreeCopy(self.copy_out(src, dest, progress, limits), 1, 0)
        if path not in self.dirs:
            raise rules.guest_missing(src)
        target = dest / posixpath.basename(path) if dest.is_dir() else dest
        tree_out.check_target(target)
        archive = self.tar_output.get(path) or self._pack(path)
        reader = _Reader(archive, progress)
        rules.report(progress, 0, len(archive))
        return tree_out.land_tree(reader.read, "", target, limits or CopyLimits())

    def _pack(self, root: str) -> bytes:
        """The archive the guest's tar would make of ``root`` ("-C root .")."""
        stream = io.BytesIO()
        below = root.rstrip("/") + "/"
        with tarfile.open(fileobj=stream, mode="w:", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted({root, *self.dirs, *self.files, *self.links}):
                if path != root and not path.startswith(below):
                    continue
                info = tarfile.TarInfo("./" + path[len(below) :] if path != root else ".")
                if path in self.dirs:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                elif path in self.links:
                    info.type, info.linkname = tarfile.SYMTYPE, self.links[path]
                    tar.addfile(info)
                else:
                    found = self.files[path]
                    info.mode, info.size = found.mode, len(found.data)
                    tar.addfile(info, io.BytesIO(found.data))
        return stream.getvalue()


@dataclass
class _Reader:
    data: bytes
    progress: CopyProgress | None
    done: int = 0

    def read(self, _size: int) -> bytes:
        chunk = self.data[self.done : self.done + CHUNK]
        self.done += len(chunk)
        if chunk:
            rules.report(self.progress, self.done, len(self.data))
        return chunk
