"""A minimal writer of Torch7's binary serialisation format, for tests of the .t7 reader.

Format (torch7 File.lua / generic/Tensor.c): every object starts with an int32 type tag
(0 nil, 1 number, 2 string, 3 table, 4 torch object, 5 boolean); tables and torch objects
then carry an int32 reference index; a torch object has a version string "V 1", its class
name, then its payload: for a tensor ndim (int32), sizes and strides (int64 each), the
1-based storage offset (int64) and the storage object; for a storage its length (int64) and
raw values; for any other class (nn modules) a table of its fields.
"""

from __future__ import annotations

import struct

import numpy as np

NIL, NUMBER, STRING, TABLE, TORCH, BOOLEAN = 0, 1, 2, 3, 4, 5


class TorchClass:
    """An nn module (or any torch class) to serialise: class name + fields."""

    def __init__(self, typename: str, **fields) -> None:
        self.typename = typename
        self.fields = fields


class T7Writer:
    def __init__(self, fh) -> None:
        self.fh = fh
        self.next_index = 1

    def _int(self, v: int) -> None:
        self.fh.write(struct.pack("<i", v))

    def _long(self, v: int) -> None:
        self.fh.write(struct.pack("<q", v))

    def _string(self, s: str) -> None:
        b = s.encode("utf-8")
        self._int(len(b))
        self.fh.write(b)

    def _index(self) -> None:
        self._int(self.next_index)
        self.next_index += 1

    def write(self, obj) -> None:
        if obj is None:
            self._int(NIL)
        elif isinstance(obj, bool):
            self._int(BOOLEAN)
            self._int(1 if obj else 0)
        elif isinstance(obj, (int, float)):
            self._int(NUMBER)
            self.fh.write(struct.pack("<d", float(obj)))
        elif isinstance(obj, str):
            self._int(STRING)
            self._string(obj)
        elif isinstance(obj, np.ndarray):
            self._tensor(obj)
        elif isinstance(obj, TorchClass):
            self._int(TORCH)
            self._index()
            self._string("V 1")
            self._string(obj.typename)
            self.write(obj.fields)
        elif isinstance(obj, (list, dict)):
            items = list(enumerate(obj, start=1)) if isinstance(obj, list) else list(obj.items())
            self._int(TABLE)
            self._index()
            self._int(len(items))
            for k, v in items:
                self.write(k)
                self.write(v)
        else:
            raise TypeError(f"cannot serialise {type(obj).__name__}")

    def _tensor(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        self._int(TORCH)
        self._index()
        self._string("V 1")
        self._string("torch.FloatTensor")
        self._int(arr.ndim)
        for s in arr.shape:
            self._long(s)
        for st in arr.strides:
            self._long(st // arr.itemsize)
        self._long(1)
        self._int(TORCH)
        self._index()
        self._string("V 1")
        self._string("torch.FloatStorage")
        self._long(arr.size)
        self.fh.write(arr.tobytes())


def write_t7(path, obj) -> None:
    with open(path, "wb") as fh:
        T7Writer(fh).write(obj)
