"""A transcript's content hash, kept per 1 MiB block so that a grown file's prefix is checked
without reading all of it (issue 24).

The content hash is xxh3-128 over the xxh3-128 digests of the file's 1 MiB blocks (the last one
partial) and its size. It tells an analyst's own file changed, not an adversary's edit; a change in
the middle of a prefix is caught when the whole file is hashed again (a touched file of the same
size, or any full pass), not by the check of a grown file, which re-reads only the last full block
and the partial one.
"""

from __future__ import annotations

import xxhash

BLOCK = 1024 * 1024


class BlockHasher:
    """Hashes bytes fed in order from ``start`` (a block boundary), one digest per full block."""

    __slots__ = ("blocks", "pos", "_block", "_filled")

    def __init__(self, blocks: list[bytes] | None = None) -> None:
        self.blocks: list[bytes] = list(blocks or ())
        self.pos = len(self.blocks) * BLOCK  # bytes hashed so far, from the start of the file
        self._block = xxhash.xxh3_128()
        self._filled = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            room = BLOCK - self._filled
            part = view[:room]
            self._block.update(part)
            self._filled += len(part)
            self.pos += len(part)
            view = view[len(part):]
            if self._filled == BLOCK:
                self.blocks.append(self._block.digest())
                self._block = xxhash.xxh3_128()
                self._filled = 0

    def tail(self) -> bytes:
        """The digest of the partial block hashed so far (empty bytes: none)."""
        return self._block.digest()

    def hexdigest(self) -> str:
        """The content hash of everything fed (from the start of the file)."""
        whole = xxhash.xxh3_128(b"".join(self.blocks))
        whole.update(self._block.digest())
        whole.update(self.pos.to_bytes(8, "little"))
        return whole.hexdigest()


def content_hash(data: bytes) -> str:
    """The content hash of a whole file's bytes (what tests compare with)."""
    hasher = BlockHasher()
    hasher.update(data)
    return hasher.hexdigest()
