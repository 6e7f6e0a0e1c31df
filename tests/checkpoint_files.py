"""Checkpoint files that torch.save cannot write, for the checkpoint tests and the bad-input rows."""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zlib
from pathlib import Path

import torch


class _Storage:
    def __init__(self, numel: int) -> None:
        self.numel = numel


class _Tensor:
    """Pickles as torch.save pickles a float32 tensor of `numel` elements, without allocating it."""

    def __init__(self, numel: int) -> None:
        self.storage, self.numel = _Storage(numel), numel

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, (self.numel,), (1,), False, collections.OrderedDict()))


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        if isinstance(obj, _Storage):  # torch.save's own reference to record data/0
            return ("storage", torch.FloatStorage, "0", "cpu", obj.numel)
        return None


def _zip(records: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip archive from (name, data as stored, method, crc32, size once inflated) records."""
    out, directory = io.BytesIO(), io.BytesIO()
    for name, data, method, crc, size in records:
        offset = out.tell()
        encoded = name.encode()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), size,
                              len(encoded), 0) + encoded + data)
        directory.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc,
                                    len(data), size, len(encoded), 0, 0, 0, 0, 0, offset) + encoded)
    start, entries = out.tell(), directory.getvalue()
    out.write(entries + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(records), len(records),
                                    len(entries), start, 0))
    return out.getvalue()


def inflating_checkpoint(path: Path, inflated: int) -> None:
    """A torch.save-layout file whose data/0 record is deflated zeros: ~1 MB per GiB on disk.

    The deflate stream is one fully flushed 4 MiB block of zeros repeated (each block starts
    afresh), so writing it costs no compression time."""
    chunk = 1 << 22
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = block * (inflated // chunk) + compressor.flush(zlib.Z_FINISH)
    crc, zeros = 0, bytes(chunk)
    for _ in range(inflated // chunk):
        crc = zlib.crc32(zeros, crc)
    pickled = io.BytesIO()
    _TorchPickler(pickled, protocol=2).dump({"0.weight": _Tensor(inflated // 4)})

    def stored(name: str, data: bytes) -> tuple[str, bytes, int, int, int]:
        return (f"archive/{name}", data, 0, zlib.crc32(data), len(data))

    path.write_bytes(_zip([stored("data.pkl", pickled.getvalue()), stored("byteorder", b"little"),
                           ("archive/data/0", stream, 8, crc, inflated), stored("version", b"3\n")]))
