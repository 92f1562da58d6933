"""Patching the client library from a mutant (for statements the client layer, not a backend, keeps).

Some statements are kept by ``tinker_std``'s shared client layer for every backend: config
defaults (BE-4), chunk merging (FB-9), custom losses (FB-10..FB-13), the types (TYP). A provider
breaks them only by shipping its own client (as a server reached through the ``tinker`` backend
does). Such a mutant replaces one library function in the suite's process, wherever a module of
``tinker_std`` holds it, when the mutant backend is constructed or imported.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["replace_everywhere"]


def replace_everywhere(original: Any, replacement: Any) -> int:
    """Rebind every module-level name in ``tinker_std.*`` that refers to ``original``; the count."""
    count = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("tinker_std") or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if value is original:
                setattr(module, attr, replacement)
                count += 1
    if not count:
        raise RuntimeError(f"mutant patch found no reference to {original!r} in tinker_std")
    return count
