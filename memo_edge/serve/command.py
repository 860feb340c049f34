"""The ``memo-edge serve`` command: parses, then calls ``memo_edge.serve.server.serve``; and the
``--backend``/``--graph-precision`` options it shares with ``predict`` and ``bench`` (defined here, once,
because serve may not import ``memo_edge/cli.py``, which adds this command with ``main.add_command``;
the renamed-option helper is ``memo_edge/utils/click_options.py``'s).
It imports click and the torch-free option modules only, so ``memo-edge --help`` never needs the
[serve] extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from memo_edge.options import GRAPH_PRECISIONS
from memo_edge.utils.click_options import renamed_option

__all__ = ["serve", "backend_option", "graph_precision_option"]


def backend_option(f: Any) -> Any:
    return click.option("--backend", default="auto", show_default=True,
                        help="auto, tensorrt, ort-trt, ort-cuda or ort-cpu (auto: the fastest available).")(f)


def graph_precision_option(f: Any) -> Any:
    return renamed_option("--graph-precision", "precision", old="--precision", type=click.Choice(GRAPH_PRECISIONS),
                          default="auto", show_default=True,
                          help="ort-cpu: the package's int8 graph (export --int8) or float32; auto: int8 when "
                          "present.")(f)


@click.command()
@click.argument("package", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; any other than loopback needs --token-file.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="TCP port.")
@backend_option
@graph_precision_option
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Most images coalesced into one backend call.")
@click.option("--max-delay-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Longest wait for more requests to join a batch.")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False),
              help="File holding a bearer token that every endpoint but /health requires.")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=64, show_default=True,
              help="Largest /predict body.")
@click.option("--max-images", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most images in one /predict request.")
@click.option("--max-image-pixels", type=click.IntRange(min=1), default=40_000_000, show_default=True,
              help="Largest image file (width x height, checked before decoding).")
@click.option("--max-upload-mb", type=click.FloatRange(min=0, min_open=True), default=512, show_default=True,
              help="Largest /update body (archives may unpack to 4x this).")
def serve(package: Path, **options: Any) -> None:
    """Serve predictions over HTTP: dynamic batching, update jobs, hot swap of new versions (docs/serve.md)."""
    from memo_edge.serve.server import serve as run_server

    run_server(package, **options)
