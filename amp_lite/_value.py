"""Value classes without `dataclasses`: what amp-lite's reports, replies and deadlines are.

`@dataclass` writes a class's methods as source text and compiles them when the module is
imported: about 0.5 ms per class on CPython 3.11, paid at every cold start (a layer's bytecode
cannot hold them). For the 15 value classes on the import path that was half of
`import amp_lite` (benchmark scenario 6). Here each class spells out its `__init__`, which is
compiled into the bytecode like any function, and shares `==`, `repr` and, when frozen,
immutability. The retry strategies and `ClientConfig` stay dataclasses: users subclass the
strategies with `@dataclass`, and the config's options are dataclass fields.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError  # loaded anyway: the strategies are dataclasses
from typing import Any, ClassVar


class Value:
    """`==` and `repr` over `_fields`, the value's attributes in order (which a subclass also
    names as its `__slots__`). Mutable, so unhashable, as a dataclass with `eq=True`."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _unshown: ClassVar[frozenset[str]] = frozenset()  # left out of repr: secrets, clocks
    _uncompared: ClassVar[frozenset[str]] = frozenset()  # left out of == (and hash)

    def _compared(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields
                     if name not in self._uncompared)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Value)
        return self._compared() == other._compared()

    __hash__ = None  # type: ignore[assignment]  # mutable: unhashable, like a dataclass with eq

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields
                          if name not in self._unshown)
        return f"{type(self).__qualname__}({shown})"

    def __reduce__(self) -> tuple[Any, ...]:
        # copy, deepcopy and pickle: rebuilt field by field, past a frozen __setattr__
        return _rebuild, (type(self), tuple(getattr(self, name) for name in self._fields))


def _rebuild(cls: type[Value], values: tuple[Any, ...]) -> Value:
    value = cls.__new__(cls)
    for name, field_value in zip(cls._fields, values, strict=True):
        object.__setattr__(value, name, field_value)
    return value


class FrozenValue(Value):
    """A Value that cannot change after `__init__` (which sets it with `_set`); hashable."""

    __slots__ = ()

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"{type(self).__name__} is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"{type(self).__name__} is immutable: cannot delete {name!r}")

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(self._compared())
