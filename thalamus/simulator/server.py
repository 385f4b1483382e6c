"""Placeholder replaced by the simulator work."""

from __future__ import annotations


def serve(host: str, port: int) -> None:
    raise NotImplementedError("the simulator is being built")
