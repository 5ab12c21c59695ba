"""``python -m ingest.cli``: the same as the ``grantex-archive`` command."""

from .root import main

main()
