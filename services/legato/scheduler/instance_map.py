"""The map of a workflow's queued and running runs that knows which definition versions they run."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar


class Versioned(Protocol):
    """What the map counts of a run: the definition version it runs (never changes)."""

    @property
    def version(self) -> int: ...


V = TypeVar("V", bound=Versioned)


class InstanceMap(dict[str, V]):
    """A workflow's queued and running runs by id, counting the definition versions they run: a batch
    loads every version its runs use (``versions``) without a scan of the runs, which a backlog of
    queued runs made cost more than the rest of the batch. Only these methods change it."""

    def __init__(self) -> None:
        super().__init__()
        self._versions: dict[int, int] = {}

    def versions(self) -> set[int]:
        return set(self._versions)

    def _count(self, version: int, delta: int) -> None:
        left = self._versions.get(version, 0) + delta
        if left > 0:
            self._versions[version] = left
        else:
            self._versions.pop(version, None)

    def __setitem__(self, key: str, inst: V) -> None:
        if (old := self.get(key)) is not None:
            self._count(old.version, -1)
        super().__setitem__(key, inst)
        self._count(inst.version, 1)

    def __delitem__(self, key: str) -> None:
        self._count(self[key].version, -1)
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            inst = super().pop(key)
            self._count(inst.version, -1)
            return inst
        return super().pop(key, *default)

    def clear(self) -> None:
        super().clear()
        self._versions.clear()

    def _unsupported(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("an InstanceMap changes through [key] =, del, pop and clear only")

    update = setdefault = popitem = __ior__ = _unsupported
