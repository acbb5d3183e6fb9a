"""Read TensorFlow checkpoints (the TensorBundle format) without TensorFlow: numpy + the standard library.

TF1 ``tf.train.Saver``, TF2 ``tf.train.Checkpoint`` and a SavedModel's ``variables/`` all write the same
container (SPEC §8): ``PREFIX.index``, a LevelDB-style sorted table (prefix-compressed keys in blocks, each
block followed by a compression byte and a masked CRC32C, a 48-byte footer with the magic number) whose
values are ``BundleEntryProto`` messages (dtype, shape, shard, offset, size, masked CRC32C of the bytes),
plus the key ``""`` holding the ``BundleHeaderProto`` (number of shards, endianness); and the shards
``PREFIX.data-NNNNN-of-NNNNN`` holding the raw tensor bytes.

A format reader is a small, total function of bytes (STYLE.md lesson 15): every block checksum is checked
when the index is opened, every entry's offset and length is checked against its shard's size before
anything is read (a truncated file is refused up front, naming it), and every tensor's checksum is checked
when it is read. Tensors are read one at a time with ``readinto`` into a buffer of their own (no ``mmap``:
the resident memory of a conversion stays one tensor beyond the model being written).

CRC32C (Castagnoli) is not in the standard library (``zlib.crc32`` is the IEEE polynomial), and in pure
Python it runs at a few MB/s, i.e. minutes for a 3 GB checkpoint; so the checksums come from
``google-crc32c`` (Google's maintained C implementation, hardware CRC32 instructions where available).
The protobuf messages are decoded here (a few fields of four message types) rather than with the
``protobuf`` package, which would need TensorFlow's generated ``.proto`` classes to be useful.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import torch

from simclrv2.checkpoint import CheckpointError

__all__ = [
    "BundleEntry",
    "BundleError",
    "TensorBundle",
    "find_bundle_prefix",
    "masked_crc32c",
]

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two varint block handles padded to 40 bytes + the 8-byte magic
BLOCK_TRAILER_SIZE = 5  # compression type (1 byte) + masked CRC32C (4 bytes)
_MASK_DELTA = 0xA282EAD8

# TensorFlow DataType enum (types.proto) -> (name, numpy dtype or None). bfloat16 has no numpy dtype: it is
# read as uint16 and reinterpreted by :meth:`TensorBundle.read_torch`.
_DTYPES: dict[int, tuple[str, Any]] = {
    1: ("float32", np.float32),
    2: ("float64", np.float64),
    3: ("int32", np.int32),
    4: ("uint8", np.uint8),
    5: ("int16", np.int16),
    6: ("int8", np.int8),
    7: ("string", None),
    8: ("complex64", np.complex64),
    9: ("int64", np.int64),
    10: ("bool", np.bool_),
    14: ("bfloat16", np.uint16),
    17: ("uint16", np.uint16),
    18: ("complex128", np.complex128),
    19: ("float16", np.float16),
    20: ("resource", None),
    21: ("variant", None),
    22: ("uint32", np.uint32),
    23: ("uint64", np.uint64),
}


class BundleError(CheckpointError):
    """A TensorFlow checkpoint that cannot be read; the message names the file and what is wrong."""


def masked_crc32c(data: bytes | bytearray | memoryview, crc: int | None = None) -> int:
    """TensorFlow's masked CRC32C: rotate right by 15 bits, add a constant (``crc32c::Mask``).

    ``crc``: an unmasked running CRC to extend instead of starting from zero.
    """
    value = google_crc32c.value(bytes(data)) if crc is None else google_crc32c.extend(crc, bytes(data))
    return _mask(value)


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# --- protobuf wire format (only what the four bundle messages use) ---------------------------------------


def _varint(data: bytes | memoryview, pos: int, where: str) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(data):
            raise BundleError(f"{where}: truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise BundleError(f"{where}: malformed varint")


def _fields(data: bytes, where: str) -> dict[int, list[Any]]:
    """Decode one protobuf message into {field number: [values]}: ints for varint/fixed fields, bytes for
    length-delimited ones (strings and sub-messages)."""
    out: dict[int, list[Any]] = {}
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos, where)
        number, wire = tag >> 3, tag & 7
        value: Any
        if wire == 0:
            value, pos = _varint(data, pos, where)
        elif wire == 1:
            if pos + 8 > len(data):
                raise BundleError(f"{where}: truncated fixed64 field")
            value, pos = int.from_bytes(data[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos, where)
            if pos + length > len(data):
                raise BundleError(f"{where}: field {number} runs past the end of its message")
            value, pos = bytes(data[pos : pos + length]), pos + length
        elif wire == 5:
            if pos + 4 > len(data):
                raise BundleError(f"{where}: truncated fixed32 field")
            value, pos = int.from_bytes(data[pos : pos + 4], "little"), pos + 4
        else:
            raise BundleError(f"{where}: unsupported protobuf wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lives: dtype name, shape, shard, byte offset and length, masked CRC32C."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int | None
    sliced: bool = False

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def _parse_entry(name: str, value: bytes, where: str) -> BundleEntry:
    f = _fields(value, f"{where}: entry {name!r}")
    dtype_code = f.get(1, [0])[-1]
    if dtype_code not in _DTYPES:
        raise BundleError(f"{where}: entry {name!r} has unknown dtype code {dtype_code}")
    shape: tuple[int, ...] = ()
    if 2 in f:
        shape_fields = _fields(f[2][-1], f"{where}: shape of {name!r}")
        if shape_fields.get(3, [0])[-1]:
            raise BundleError(f"{where}: entry {name!r} has an unknown rank")
        dims = [_signed64(_fields(d, where).get(1, [0])[-1]) for d in shape_fields.get(2, [])]
        if any(d < 0 for d in dims):
            raise BundleError(f"{where}: entry {name!r} has a negative dimension {dims}")
        shape = tuple(dims)
    return BundleEntry(
        name=name,
        dtype=_DTYPES[dtype_code][0],
        shape=shape,
        shard=f.get(3, [0])[-1],
        offset=f.get(4, [0])[-1],
        size=f.get(5, [0])[-1],
        crc32c=f[6][-1] if 6 in f else None,
        sliced=7 in f,
    )


# --- the sorted table of the .index file -----------------------------------------------------------------


def _read_block(data: bytes, offset: int, size: int, where: str) -> list[tuple[bytes, bytes]]:
    end = offset + size + BLOCK_TRAILER_SIZE
    if offset < 0 or end > len(data) - FOOTER_SIZE:
        raise BundleError(f"{where}: a table block ({offset}+{size}) lies outside the file: truncated?")
    content = data[offset : offset + size]
    kind = data[offset + size]
    stored = int.from_bytes(data[offset + size + 1 : end], "little")
    if masked_crc32c(data[offset : offset + size + 1]) != stored:
        raise BundleError(f"{where}: checksum mismatch in the table block at byte {offset}: file corrupt")
    if kind != 0:
        raise BundleError(f"{where}: compressed table blocks (type {kind}) are not supported")
    if size < 4:
        raise BundleError(f"{where}: table block at byte {offset} is too short")
    num_restarts = int.from_bytes(content[-4:], "little")
    limit = size - 4 * (num_restarts + 1)
    if limit < 0:
        raise BundleError(f"{where}: table block at byte {offset} has a bad restart array")
    entries, key, pos = [], b"", 0
    while pos < limit:
        shared, pos = _varint(content, pos, where)
        unshared, pos = _varint(content, pos, where)
        value_len, pos = _varint(content, pos, where)
        if shared > len(key) or pos + unshared + value_len > limit:
            raise BundleError(f"{where}: malformed entry in the table block at byte {offset}")
        key = key[:shared] + content[pos : pos + unshared]
        pos += unshared
        entries.append((key, content[pos : pos + value_len]))
        pos += value_len
    return entries


def _read_table(data: bytes, where: str) -> list[tuple[bytes, bytes]]:
    if len(data) < FOOTER_SIZE or int.from_bytes(data[-8:], "little") != TABLE_MAGIC:
        raise BundleError(
            f"{where}: not a TensorFlow checkpoint index (no table footer/magic number): truncated, or "
            "another kind of file"
        )
    footer = data[-FOOTER_SIZE:]
    _meta_offset, pos = _varint(footer, 0, where)
    _meta_size, pos = _varint(footer, pos, where)
    index_offset, pos = _varint(footer, pos, where)
    index_size, pos = _varint(footer, pos, where)
    entries = []
    for _key, handle in _read_block(data, index_offset, index_size, where):
        block_offset, p = _varint(handle, 0, where)
        block_size, _ = _varint(handle, p, where)
        entries += _read_block(data, block_offset, block_size, where)
    return entries


# --- the bundle --------------------------------------------------------------------------------------------


def find_bundle_prefix(path: str | Path) -> Path:
    """The checkpoint prefix (``.../model.ckpt-123``, ``.../variables/variables``) for what a user gives.

    Accepts the prefix itself, its ``.index`` or a ``.data-*`` file, a TF1/TF2 checkpoint directory (the
    ``checkpoint`` file's ``model_checkpoint_path``, else its only ``.index``), or a SavedModel directory
    (``variables/variables``). Raises BundleError saying what was found instead.
    """
    path = Path(path).expanduser()
    if path.name.endswith(".index") and path.is_file():
        return path.with_name(path.name[: -len(".index")])
    if ".data-" in path.name and path.is_file():
        return path.with_name(path.name.split(".data-")[0])
    if Path(f"{path}.index").is_file():
        return path
    if path.is_dir():
        if (path / "variables" / "variables.index").is_file():
            return path / "variables" / "variables"
        if (path / "saved_model" / "variables" / "variables.index").is_file():
            return path / "saved_model" / "variables" / "variables"
        named = _checkpoint_file_prefix(path)
        if named is not None:
            return named
        indexes = sorted(path.glob("*.index"))
        if len(indexes) == 1:
            return indexes[0].with_name(indexes[0].name[: -len(".index")])
        if len(indexes) > 1:
            names = ", ".join(p.name for p in indexes[:6])
            raise BundleError(f"{path} holds several checkpoints ({names}): give the prefix of one of them")
        raise BundleError(f"{path} holds no TensorFlow checkpoint (no *.index, no variables/variables.index)")
    raise BundleError(
        f"{path}: no TensorFlow checkpoint there (expected a directory, a prefix such as model.ckpt-1000 "
        "with model.ckpt-1000.index beside it, or the .index file)"
    )


def _checkpoint_file_prefix(directory: Path) -> Path | None:
    """The prefix the ``checkpoint`` text file names (``model_checkpoint_path: "model.ckpt-250228"``),
    looked for beside that file: the name may be a path on the machine (or bucket) that wrote it."""
    state = directory / "checkpoint"
    if not state.is_file():
        return None
    for line in state.read_text(errors="replace").splitlines():
        if line.startswith("model_checkpoint_path:"):
            name = line.split(":", 1)[1].strip().strip('"')
            local = directory / name.replace("\\", "/").rsplit("/", 1)[-1]
            if Path(f"{local}.index").is_file():
                return local
            raise BundleError(f"{state} names {name}, but {local}.index does not exist: download it too")
    return None


class TensorBundle:
    """A TensorFlow checkpoint opened for reading: names, dtypes and shapes, then one tensor at a time.

    ``TensorBundle(prefix_or_directory)`` reads and checks the index (see :func:`find_bundle_prefix` for
    what is accepted); :meth:`read` returns a tensor as numpy after checking its CRC32C, :meth:`read_torch`
    as a torch tensor. Use as a context manager (or call :meth:`close`) to close the shard files.
    """

    def __init__(self, path: str | Path) -> None:
        self.prefix = find_bundle_prefix(path)
        self.index_path = Path(f"{self.prefix}.index")
        data = self.index_path.read_bytes()
        where = str(self.index_path)
        raw = _read_table(data, where)
        header = dict(raw).get(b"")
        if header is None:
            raise BundleError(f"{where}: no bundle header entry: not a TensorBundle index")
        h = _fields(header, f"{where}: header")
        self.num_shards = int(h.get(1, [1])[-1])
        if h.get(2, [0])[-1] != 0:
            raise BundleError(f"{where}: big-endian checkpoints are not supported")
        self.entries: dict[str, BundleEntry] = {}
        for key, value in raw:
            if key == b"" or key.startswith(b"\x00"):  # the header; slices of partitioned variables
                continue
            name = key.decode("utf-8", errors="replace")
            self.entries[name] = _parse_entry(name, value, where)
        self._files: dict[int, Any] = {}
        self._check_shards()

    def shard_path(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")

    def _check_shards(self) -> None:
        sizes: dict[int, int] = {}
        for shard in range(self.num_shards):
            p = self.shard_path(shard)
            if not p.is_file():
                raise BundleError(f"{p} is missing: a checkpoint needs its .index and every .data shard")
            sizes[shard] = p.stat().st_size
        for e in self.entries.values():
            if e.sliced:  # its data lives in slice entries, which are not read (see _entry)
                continue
            if not 0 <= e.shard < self.num_shards:
                raise BundleError(f"{self.index_path}: {e.name!r} names shard {e.shard} of {self.num_shards}")
            if e.offset < 0 or e.offset + e.size > sizes[e.shard]:
                raise BundleError(
                    f"{self.shard_path(e.shard)} is truncated or does not belong to {self.index_path}: "
                    f"{e.name!r} needs bytes {e.offset}..{e.offset + e.size}, the file has {sizes[e.shard]}"
                )
            itemsize = _itemsize(e.dtype)
            if itemsize and e.size != e.numel * itemsize:
                raise BundleError(
                    f"{self.index_path}: {e.name!r} ({e.dtype} {list(e.shape)}) should take "
                    f"{e.numel * itemsize} bytes, the index says {e.size}"
                )

    # -- listing ----------------------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """{name: shape} of every tensor (what ``tf.train.list_variables`` gives)."""
        return {name: e.shape for name, e in self.entries.items()}

    # -- reading ----------------------------------------------------------------------------------------

    def read_bytes(self, name: str) -> bytearray:
        """The stored bytes of tensor ``name``, checksum verified (BundleError naming the file otherwise)."""
        e = self._entry(name)
        f = self._files.get(e.shard)
        if f is None:
            f = self._files[e.shard] = open(self.shard_path(e.shard), "rb")  # noqa: SIM115 - kept open
        buf = bytearray(e.size)
        f.seek(e.offset)
        if f.readinto(buf) != e.size:
            raise BundleError(f"{self.shard_path(e.shard)}: truncated while reading {name!r}")
        if e.crc32c is not None and e.dtype != "string" and masked_crc32c(buf) != e.crc32c:
            raise BundleError(
                f"{self.shard_path(e.shard)}: checksum mismatch for {name!r}: the file is corrupt or was "
                "altered; download it again"
            )
        return buf

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a numpy array (strings: an object array of ``bytes``), checksum verified."""
        e = self._entry(name)
        if e.dtype == "string":
            return self._read_strings(e)
        numpy_dtype = _DTYPES_BY_NAME.get(e.dtype)
        if numpy_dtype is None:
            raise BundleError(f"{self.index_path}: {name!r} is a {e.dtype} tensor: it holds no data to read")
        return np.frombuffer(self.read_bytes(name), dtype=numpy_dtype).reshape(e.shape)

    def read_torch(self, name: str) -> torch.Tensor:
        """Tensor ``name`` as a CPU torch tensor (bfloat16 included), checksum verified."""
        e = self._entry(name)
        array = self.read(name)
        if e.dtype == "bfloat16":
            return torch.from_numpy(array.copy()).view(torch.bfloat16)
        if array.dtype.kind in "OU":
            raise BundleError(f"{name!r} is a {e.dtype} tensor: read it with read()")
        return torch.from_numpy(array)

    def verify(self) -> None:
        """Read every tensor once and check its checksum (BundleError on the first bad one)."""
        for name, e in self.entries.items():
            if e.dtype not in ("resource", "variant"):
                self.read_bytes(name) if e.dtype != "string" else self.read(name)

    def _entry(self, name: str) -> BundleEntry:
        e = self.entries.get(name)
        if e is None:
            raise KeyError(f"{name!r} is not in {self.index_path}")
        if e.sliced:
            raise BundleError(f"{self.index_path}: {name!r} is a partitioned (sliced) variable: unsupported")
        return e

    def _read_strings(self, e: BundleEntry) -> np.ndarray:
        """[varint64 length] * N, [masked CRC32C of the lengths as uint32], the bytes; the entry's CRC covers
        the lengths (as uint32), that checksum, and the bytes (TF's ``WriteStringTensor``)."""
        data = bytes(self.read_bytes(e.name))
        where = f"{self.shard_path(e.shard)}: {e.name!r}"
        lengths, pos, crc = [], 0, 0
        for _ in range(e.numel):
            n, pos = _varint(data, pos, where)
            lengths.append(n)
            crc = google_crc32c.extend(crc, struct.pack("<I" if n <= 0xFFFFFFFF else "<Q", n))
        if pos + 4 > len(data):
            raise BundleError(f"{where}: truncated string tensor")
        length_crc = data[pos : pos + 4]
        if e.numel and int.from_bytes(length_crc, "little") != _mask(crc):
            raise BundleError(f"{where}: checksum mismatch in the string lengths: the file is corrupt")
        crc = google_crc32c.extend(crc, length_crc)
        pos += 4
        values = []
        for n in lengths:
            if pos + n > len(data):
                raise BundleError(f"{where}: truncated string tensor")
            values.append(data[pos : pos + n])
            pos += n
        crc = google_crc32c.extend(crc, data[pos - sum(lengths) : pos])
        if e.crc32c is not None and _mask(crc) != e.crc32c:
            raise BundleError(f"{where}: checksum mismatch: the file is corrupt or was altered")
        out = np.empty(e.numel, dtype=object)
        out[:] = values
        return out.reshape(e.shape)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> TensorBundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TensorBundle({str(self.prefix)!r}, {len(self)} tensors, {self.num_shards} shards)"


_DTYPES_BY_NAME = {name: np_dtype for name, np_dtype in _DTYPES.values() if np_dtype is not None}


def _itemsize(dtype: str) -> int:
    np_dtype = _DTYPES_BY_NAME.get(dtype)
    return int(np.dtype(np_dtype).itemsize) if np_dtype is not None else 0
