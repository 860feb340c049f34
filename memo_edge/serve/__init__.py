"""``memo-edge serve``: a package's predictions over HTTP (Starlette + uvicorn). Never imports torch.

Modules: ``command`` (the click command, no server imports), ``server`` (checks, then uvicorn),
``app`` (the Starlette app and its endpoints), ``inputs`` (request bodies to uint8 batches),
``batcher`` (dynamic batching), ``state`` (the loaded version and its hot swap), ``metrics``.
Only ``command`` is imported by ``memo_edge.cli``; the others import the ``[serve]`` extra.
"""
