"""Byte ranges of one safetensors file on the Hub, read through huggingface_hub's ``HfFileSystem``
(its session, token, retries and cached listings): the header first, then only the ranges asked
for; a few MB instead of the checkpoint. The compatibility probe reads embedding rows this way."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

HEADER_PROBE_BYTES = 16 << 10  # the first read of a header; more is read when the header is longer
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit: a longer "header" means another kind of file
ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class TensorEntry:
    dtype: str  # safetensors' name of it: "F32", "BF16", ...
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the tensor's data in its file

    @property
    def row_bytes(self) -> int:
        return self.shape[1] * ITEM_BYTES.get(self.dtype, 0)


def parse_safetensors_header(prefix: bytes) -> tuple[int, dict[str, TensorEntry] | None]:
    """(header length, tensors) from the first bytes of a safetensors file; tensors is None
    when ``prefix`` does not hold the whole header yet (read 8 + length bytes, then call again)."""
    if len(prefix) < 8:
        raise ValueError("not a safetensors file: shorter than 8 bytes")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > MAX_HEADER_BYTES:
        raise ValueError(f"not a safetensors file: header length {length}")
    if len(prefix) < 8 + length:
        return length, None
    header = json.loads(prefix[8 : 8 + length])
    tensors = {
        name: TensorEntry(spec["dtype"], tuple(spec["shape"]), 8 + length + spec["data_offsets"][0])
        for name, spec in header.items() if name != "__metadata__"
    }
    return length, tensors


class RemoteSafetensors:
    """One safetensors file of a Hub repo at a pinned commit. Bytes of the header's first read are
    served from it, never fetched again: in a small file the rows lie inside that first block."""

    def __init__(self, repo_id: str, filename: str, revision: str, token: str | None = None) -> None:
        from huggingface_hub import HfFileSystem

        self.repo_id, self.filename, self.revision = repo_id, filename, revision
        self._fs = HfFileSystem(token=token)
        self.bytes_read = 0
        self.requests = 0  # range requests (the file system also lists the folder once)
        self._prefix = b""
        self._whole = False  # the prefix is the whole file (it ended within the first read)
        self._tensors: dict[str, TensorEntry] | None = None

    def read(self, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)``, fewer at the end of the file."""
        known = self._prefix
        if start < len(known):
            head = known[start:stop]
            return head if stop <= len(known) or self._whole else head + self._fetch(len(known), stop)
        return self._fetch(start, stop)

    def _fetch(self, start: int, stop: int) -> bytes:
        self.requests += 1
        # no read-ahead cache: one range request for exactly these bytes
        with self._fs.open(f"{self.repo_id}/{self.filename}", "rb", revision=self.revision, cache_type="none") as handle:
            handle.seek(start)
            data = handle.read(stop - start)
        self.bytes_read += len(data)
        return data

    def tensors(self) -> dict[str, TensorEntry]:
        """The header's tensors (one read of ``HEADER_PROBE_BYTES``, a second for a longer header)."""
        if self._tensors is None:
            self._prefix = self.read(0, HEADER_PROBE_BYTES)
            self._whole = len(self._prefix) < HEADER_PROBE_BYTES
            length, tensors = parse_safetensors_header(self._prefix)
            if tensors is None:
                self._prefix += self.read(len(self._prefix), 8 + length)
                length, tensors = parse_safetensors_header(self._prefix)
                if tensors is None:
                    raise ValueError(f"{self.filename}: truncated safetensors header")
            self._tensors = tensors
        return self._tensors
