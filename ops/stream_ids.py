"""Redis stream entry ids (``<milliseconds>-<sequence>``): their time, their neighbours.

Neighbours stand in for exclusive ranges, which need Redis 6.2; these work on any server.
"""

from __future__ import annotations

import re

_ENTRY_ID = re.compile(r"\d+-\d+")
_MAX_SEQUENCE = 2**64 - 1


def is_entry_id(text: str) -> bool:
    """Whether ``text`` is a complete entry id."""
    return _ENTRY_ID.fullmatch(text) is not None


def entry_millis(entry_id: str) -> int:
    """When the entry was added, in epoch milliseconds."""
    return int(entry_id.partition("-")[0])


def id_after(entry_id: str) -> str:
    """The smallest id greater than ``entry_id``."""
    millis, _, seq = entry_id.partition("-")
    if int(seq) < _MAX_SEQUENCE:
        return f"{millis}-{int(seq) + 1}"
    return f"{int(millis) + 1}-0"


def id_before(entry_id: str) -> str:
    """The greatest id smaller than ``entry_id`` (``0-0`` has none; it is returned as is)."""
    millis, _, seq = entry_id.partition("-")
    if int(seq) > 0:
        return f"{millis}-{int(seq) - 1}"
    if int(millis) > 0:
        return f"{int(millis) - 1}-{_MAX_SEQUENCE}"
    return entry_id
