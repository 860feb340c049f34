"""The device's learning side: ``memo-edge update`` trains a new task with torch and commits it to a package.

It sits beside the torch-free runtime (``memo_edge.runtime``), above it and the trainer: it uses both,
and the runtime never imports it.
"""

from __future__ import annotations

from memo_edge.device.update import UpdateConfig, update_package

__all__ = ["UpdateConfig", "update_package"]
