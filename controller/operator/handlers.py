"""Every kopf handler of `comptroller operator`: importing a module registers its handlers.

`main` imports this module once, before starting kopf; nothing else should import handler
modules for their side effect.
"""

from __future__ import annotations

from controller.operator import accounting, policies  # noqa: F401  (registers the handlers)

# --- other operator loops: import their handler modules here -----------------------------------
# isort: split
from controller.operator import lifecycle  # noqa: F401  (expiry, idle, audit, wake, webhook scope)

# isort: split
from controller.operator import runs  # noqa: F401  (cost per run: annotations and GPUCost Events)
# -------------------------------------------------------------------------------------------------
