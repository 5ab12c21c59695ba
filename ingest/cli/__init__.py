"""The ``grantex-archive`` command line: a thin layer over the ``ingest`` and ``queries`` libraries.

:mod:`.root` assembles the group from the command modules; :mod:`.errors`
holds the one table from library exception (and ingest outcome) to exit
code; :mod:`.options` the options several commands share.
"""

from __future__ import annotations

from .root import RootGroup, main

__all__ = ["RootGroup", "main"]
