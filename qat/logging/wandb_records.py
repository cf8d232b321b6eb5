"""Reader for W&B's `run-<id>.wandb` record log (the "transaction log"), without a server.

wandb >= 0.30 writes an offline run only as this file (no config/summary JSON), and the old Python
reader (`wandb.sdk.internal.datastore`) is gone: wandb-core (Go) has the only reader. The format,
checked against wandb 0.31.0's files:

- a 7-byte file header: b":W&B", magic 0xBEE1 (little-endian u16), version byte 0;
- then LevelDB-log-style 32 KiB blocks (the first block includes the file header). Each record
  fragment has a 7-byte header: crc32 (u32 LE; zlib CRC-32 of the type byte + payload, unmasked),
  payload length (u16 LE), type (u8: 1 full, 2 first, 3 middle, 4 last). A block tail shorter than
  7 bytes is zero padding; a zero-type fragment means the rest of the block is unused.
- each reassembled payload is a serialized `wandb.proto.wandb_internal_pb2.Record`.

wandb-core buffers writes and flushes every `x_transaction_log_flush_interval` seconds (15 s by
default), so a killed process may leave a file holding only part of its run (or just the header);
a file cut mid-record is read up to its last complete record.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
_REC_HEADER = struct.Struct("<IHB")  # crc32, length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


class RecordLogError(ValueError):
    """The file is not a W&B record log."""


def iter_payloads(data: bytes, *, strict: bool = False, problems: list[str] | None = None) -> Iterator[bytes]:
    """Yield the reassembled record payloads of a record-log byte string.

    A corrupt fragment (bad CRC, length past the block, unknown type) drops the fragment being
    assembled and skips to the next block, as LevelDB's reader does, and is described in `problems`
    (when given); `strict` raises instead. A truncated tail ends the iteration.
    """
    if data[: len(FILE_HEADER)] != FILE_HEADER:
        raise RecordLogError(f"not a W&B record log (header {data[:7]!r})")
    pos = len(FILE_HEADER)
    n = len(data)
    pending: bytearray | None = None
    while pos < n:
        block_left = BLOCK_SIZE - pos % BLOCK_SIZE
        if block_left < _REC_HEADER.size:  # block trailer padding
            pos += block_left
            continue
        if pos + _REC_HEADER.size > n:
            break  # truncated header at the end of the file
        crc, length, rtype = _REC_HEADER.unpack_from(data, pos)
        start = pos + _REC_HEADER.size
        end = start + length
        if rtype == 0 and length == 0:  # zeroed / preallocated rest of block
            pos += block_left
            continue
        if end > n:
            break  # truncated payload at the end of the file (killed mid-write)
        problem = None
        if length > block_left - _REC_HEADER.size:
            problem = "fragment crosses a block boundary"
        elif rtype not in (_FULL, _FIRST, _MIDDLE, _LAST):
            problem = f"unknown fragment type {rtype}"
        elif zlib.crc32(data[start - 1 : end]) != crc:  # crc covers the type byte + payload
            problem = "CRC mismatch"
        if problem is not None:
            if strict:
                raise RecordLogError(f"corrupt record at byte {pos}: {problem}")
            if problems is not None:
                problems.append(f"corrupt record at byte {pos}: {problem}")
            pending = None
            pos += block_left
            continue
        payload = data[start:end]
        pos = end
        if rtype == _FULL:
            pending = None
            yield bytes(payload)
        elif rtype == _FIRST:
            pending = bytearray(payload)
        elif pending is not None:  # MIDDLE or LAST continuing a FIRST
            pending += payload
            if rtype == _LAST:
                yield bytes(pending)
                pending = None
        # a MIDDLE/LAST without its FIRST (after a skipped block) is dropped


def iter_records(path: str | Path, *, strict: bool = False, problems: list[str] | None = None):
    """Yield the `wandb_internal_pb2.Record` messages stored in a `run-<id>.wandb` file; corrupt or undecodable
    records are skipped and described in `problems` (when given), or raise with `strict`."""
    from wandb.proto import wandb_internal_pb2 as pb  # lazy: importing wandb takes ~0.5 s

    data = Path(path).read_bytes()
    for payload in iter_payloads(data, strict=strict, problems=problems):
        record = pb.Record()
        try:
            record.ParseFromString(payload)
        except Exception as e:  # protobuf's DecodeError
            if strict:
                raise RecordLogError(f"{path}: undecodable record: {e}") from e
            if problems is not None:
                problems.append(f"undecodable record: {e}")
            continue
        yield record
