"""Documents of a domain one at a time, so that a corpus larger than RAM tokenizes in bounded memory.

``txt``, ``dir`` and ``jsonl`` sources are read incrementally by the same document rules as ``load_documents``
(``sparsecl.data.domains.local_documents``); every other source is small enough to come from ``load_documents``.
Deduplication happens downstream, by document hash.
"""

from __future__ import annotations

from collections.abc import Iterator

from sparsecl.config import DomainSpec
from sparsecl.data.domains import dir_files, load_documents, local_documents, local_path
from sparsecl.data.tasks import is_task

STREAMED = ("txt", "dir", "jsonl")

__all__ = ["STREAMED", "dir_files", "iter_documents", "local_path"]


def iter_documents(spec: DomainSpec) -> Iterator[str]:
    """The domain's documents in source order, NULs removed and capped at max_bytes; not deduplicated."""
    if spec.source not in STREAMED or is_task(spec):  # a task's documents come from its pairs
        yield from load_documents(spec)
        return
    size = 0
    for d in local_documents(spec):
        if spec.max_bytes and size >= spec.max_bytes:
            return
        d = d.replace("\x00", "")
        size += len(d.encode("utf-8")) + 1
        yield d
