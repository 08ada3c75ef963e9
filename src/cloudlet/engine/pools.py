"""Storage pools: directories or LVM volume groups that hold volumes, and their limits.

A thin pool may promise more than it holds (``storage.overcommit`` times its size);
every volume create or grow checks that promise under one storage lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from cloudlet.engine import locks
from cloudlet.engine.storage_rows import DEFAULT_POOL, STORAGE_LOCK
from cloudlet.engine.storage_views import PoolView
from cloudlet.engine.views import Done
from cloudlet.errors import Conflict, InvalidInput, NotFound
from cloudlet.next_steps import Step, step
from cloudlet.spec import names
from cloudlet.spec.storage import PoolSpec
from cloudlet.storage.pools import PoolBackend, open_pool
from cloudlet.store.models import PoolRow, VolumeRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext


class Pools:
    """Pool records and their backends, on the engine's shared context."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    @contextmanager
    def storage_lock(self) -> Iterator[None]:
        """Held while pools change or a volume's size is promised out of one."""
        with locks.hold(self.ctx.paths.locks, STORAGE_LOCK, what="storage"):
            yield

    def ensure_default(self) -> None:
        """The default pool (in the state directory) exists before anything uses pools."""
        with self.ctx.db.session() as s:
            if s.get(PoolRow, DEFAULT_POOL) is not None:
                return
        path = self.ctx.paths.pools / DEFAULT_POOL
        path.mkdir(parents=True, exist_ok=True)
        with self.storage_lock(), self.ctx.db.session() as s:
            if s.get(PoolRow, DEFAULT_POOL) is None:
                s.add(PoolRow(name=DEFAULT_POOL, kind="dir", path=str(path)))

    def lookup(self, name: str) -> tuple[PoolRow, PoolBackend]:
        """A pool's record and its backend; an unknown name is NotFound."""
        names.pool_name(name)
        self.ensure_default()
        with self.ctx.db.session() as s:
            row = s.get(PoolRow, name)
        if row is None:
            raise NotFound(
                f"no pool named {name!r}", hint="list the pools", next_steps=[step(Step.POOL_LIST)]
            )
        return row, open_pool(row.kind, row.name, Path(row.path))

    def overcommit(self, backend: PoolBackend) -> float:
        """Thin pools may promise more than they hold; thick LVs take their size at once."""
        return self.ctx.settings.storage_overcommit if backend.thin else 1.0

    @staticmethod
    def limit_base(backend: PoolBackend) -> str:
        """What the thin limit multiplies, for messages."""
        if backend.kind == "lvm":
            return "thin pool" if backend.thin else "volume group"
        return "file system"

    def committed(self, pool: str) -> int:
        """The virtual sizes the volumes of ``pool`` were promised."""
        with self.ctx.db.session() as s:
            return sum(s.scalars(select(VolumeRow.size).where(VolumeRow.pool == pool)).all())

    def view(self, row: PoolRow) -> PoolView:
        backend = open_pool(row.kind, row.name, Path(row.path))
        usage = backend.usage()
        with self.ctx.db.session() as s:
            vols = s.scalars(select(VolumeRow).where(VolumeRow.pool == row.name)).all()
        return PoolView(
            name=row.name,
            kind=row.kind,
            path=row.path,
            fs_total=usage.total,
            fs_free=usage.free,
            limit=int(usage.total * self.overcommit(backend)),
            committed=sum(v.size for v in vols),
            allocated=sum(backend.allocated(Path(v.path)) for v in vols),
            volumes=len(vols),
        )

    def pools(self) -> list[PoolView]:
        self.ensure_default()
        with self.ctx.db.session() as s:
            rows = s.scalars(select(PoolRow).order_by(PoolRow.name)).all()
        return [self.view(r) for r in rows]

    def pool_create(
        self, name: str, path: Path | None = None, kind: str = "dir", devices: tuple[str, ...] = ()
    ) -> PoolView:
        """A directory pool at ``path``, or (kind "lvm") a volume group over ``devices``."""
        names.pool_name(name)
        if kind == "lvm":
            return self._lvm_pool_create(name, devices)
        if path is None:
            raise InvalidInput("a directory pool needs a path", hint="give its directory")
        spec = PoolSpec(name=name, kind="dir", path=str(path)) if kind == "dir" else None
        backend = open_pool(kind, name, path)  # refuses unknown kinds
        assert spec is not None
        self.ensure_default()
        with self.storage_lock():
            with self.ctx.db.session() as s:
                if s.get(PoolRow, name) is not None:
                    raise Conflict(f"a pool named {name!r} already exists", hint="pick another")
                clash = s.scalar(select(PoolRow.name).where(PoolRow.path == str(path)))
            if clash is not None:
                raise Conflict(f"pool {clash} already uses {path}", hint="pick another directory")
            backend.check()
            with self.ctx.db.session() as s:
                s.add(PoolRow(name=spec.name, kind=spec.kind, path=spec.path))
        return self.pool(name)

    def _lvm_pool_create(self, name: str, devices: tuple[str, ...]) -> PoolView:
        from cloudlet.storage import lvm

        vg = lvm.vg_name(name)
        spec = PoolSpec(name=name, kind="lvm", path=f"/dev/{vg}")
        self.ensure_default()
        with self.storage_lock():
            with self.ctx.db.session() as s:
                if s.get(PoolRow, name) is not None:
                    raise Conflict(f"a pool named {name!r} already exists", hint="pick another")
            nodes = lvm.check_devices(devices)  # refuses before anything changes
            if not lvm.device_mapper_available():
                raise InvalidInput(
                    "this kernel has no device-mapper: LVM volumes cannot be activated here",
                    hint="load the dm-mod module, or use a directory pool",
                )
            if vg in lvm.existing_vgs():
                raise Conflict(f"volume group {vg} already exists", hint="pick another pool name")
            thin = lvm.thin_available()
            if not thin:
                self.ctx.notice(
                    "thin provisioning is not available (thin-provisioning-tools or the "
                    "dm-thin-pool module missing): volumes are plain LVs that take their size"
                )
            lvm.create_pool(name, nodes, thin=thin)
            try:
                with self.ctx.db.session() as s:
                    s.add(PoolRow(name=spec.name, kind=spec.kind, path=spec.path))
            except BaseException:
                open_pool("lvm", name, Path(spec.path)).destroy()
                raise
        return self.pool(name)

    def pool(self, name: str) -> PoolView:
        row, _ = self.lookup(name)
        return self.view(row)

    def pool_delete(self, name: str) -> Done:
        names.pool_name(name)
        if name == DEFAULT_POOL:
            raise Conflict("the default pool cannot be deleted", hint="delete its volumes instead")
        with self.storage_lock():
            pool_row, backend = self.lookup(name)
            with self.ctx.db.session() as s:
                vols = s.scalars(select(VolumeRow.name).where(VolumeRow.pool == name)).all()
            if vols:
                raise Conflict(
                    f"pool {name} still holds volumes: {', '.join(sorted(vols))}",
                    hint="delete them first",
                )
            backend.destroy()
            with self.ctx.db.session() as s:
                row = s.get(PoolRow, name)
                if row is not None:
                    s.delete(row)
        if pool_row.kind == "lvm":
            message = f"pool {name} deleted (its volume group and PV labels removed)"
        else:
            message = f"pool {name} deleted (its directory is left as it is)"
        return Done("pool", name, "deleted", message)
