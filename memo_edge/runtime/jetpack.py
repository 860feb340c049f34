"""JetPack releases: the Jetson Linux (L4T) release each one is, and the TensorRT it ships.

One table for the two places that need it: ``memo-edge doctor`` (which JetPack a Jetson's
/etc/nv_tegra_release names, and whether its TensorRT runs the native backend) and the TensorRT
op-support check (``runtime/trt_ops.py``: every graph must parse on the TensorRT of each supported
JetPack). Only pairings a source states are listed, each with its source; ``tensorrt`` is None where
none was found.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["JetPackRelease", "JETPACK", "JETPACK_LINES", "release_for_l4t"]


@dataclass(frozen=True)
class JetPackRelease:
    jetpack: str  # "6.2"
    l4t: tuple[int, int, int]  # Jetson Linux release, e.g. (36, 4, 3) for R36.4.3
    tensorrt: str | None  # the TensorRT it ships; None where no source states it
    source: str


_NV = "developer.nvidia.com/embedded/"
JETPACK: tuple[JetPackRelease, ...] = (
    JetPackRelease("4.6.1", (32, 7, 1), "8.2", _NV + "jetpack-sdk-461"),
    JetPackRelease("5.0.2", (35, 1, 0), "8.4.1", _NV + "jetpack-sdk-502"),
    JetPackRelease("5.1", (35, 2, 1), "8.5.2", _NV + "jetpack-sdk-51"),
    JetPackRelease("5.1.1", (35, 3, 1), "8.5.2", _NV + "jetpack-sdk-511"),
    JetPackRelease("5.1.2", (35, 4, 1), "8.5.2", _NV + "jetpack-sdk-512 (the compute stack of 5.1.1)"),
    JetPackRelease("5.1.3", (35, 5, 0), "8.5.2", "github.com/dusty-nv/jetson-containers pull 1042, issue 1677"),
    JetPackRelease("5.1.4", (35, 6, 0), "8.5.2", _NV + "jetpack-sdk-514 (the compute stack of 5.1.3)"),
    JetPackRelease("6.0 DP", (36, 2, 0), None, "docs.nvidia.com/jetson/jetpack/6.0DP/introduction"),
    JetPackRelease("6.0", (36, 3, 0), "8.6.2", "L4T: github.com/rbonghi/jetson_stats jtop/core/jetson_variables.py; "
                   "TensorRT: device reports in public repositories (no NVIDIA page reached)"),
    JetPackRelease("6.1", (36, 4, 0), "10.3", "L4T: jetson_stats (as 6.0); TensorRT: "
                   "docs.pytorch.org/TensorRT/getting_started/jetpack.html (its 6.1 edition)"),
    JetPackRelease("6.2", (36, 4, 3), "10.3", "L4T: github.com/balena-os/balena-jetson-orin pull 541; TensorRT: "
                   "docs.pytorch.org/TensorRT/getting_started/jetpack.html (its 6.2 edition)"),
    JetPackRelease("6.2.1", (36, 4, 4), None, "docs.nvidia.com/jetson/jetpack/introduction"),
)
# A revision the table lacks: its major release alone names the JetPack line (34 = the 5.0 developer
# previews, jetpack-sdk-50dp; 38 = JetPack 7, developer.nvidia.com/embedded/jetpack/downloads).
JETPACK_LINES = {32: "4.x", 34: "5.0 DP", 35: "5.x", 36: "6.x", 38: "7.x"}


def release_for_l4t(l4t: tuple[int, int, int]) -> JetPackRelease | None:
    """The JetPack whose Jetson Linux release is exactly ``l4t``, or None."""
    return next((r for r in JETPACK if r.l4t == l4t), None)
