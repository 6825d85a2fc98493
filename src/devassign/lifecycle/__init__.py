"""Device lifecycle: per-type handlers that set devices up and clean them, and the libvirt XML.

Start with :func:`devassign.lifecycle.executor.run_action`; handlers act on the host only
through :class:`devassign.lifecycle.host.HostOps`. See docs/lifecycle.md.
"""

from __future__ import annotations

from devassign.lifecycle.base import (
    Facts,
    Handler,
    HandlerError,
    HealthResult,
    LifecycleDevice,
    TypeConfig,
)
from devassign.lifecycle.executor import Action, ActionResult, run_action, state_after
from devassign.lifecycle.host import (
    HostOps,
    Netlink,
    PyrouteNetlink,
    RecordingNetlink,
    RecordingRunner,
    Runner,
    RunResult,
    SubprocessRunner,
    VfConfig,
)
from devassign.lifecycle.registry import (
    UnknownHandlerError,
    handler_name_for,
    handler_names,
    load_handler,
)

__all__ = [
    "Action",
    "ActionResult",
    "Facts",
    "Handler",
    "HandlerError",
    "HealthResult",
    "HostOps",
    "LifecycleDevice",
    "Netlink",
    "PyrouteNetlink",
    "RecordingNetlink",
    "RecordingRunner",
    "RunResult",
    "Runner",
    "SubprocessRunner",
    "TypeConfig",
    "UnknownHandlerError",
    "VfConfig",
    "handler_name_for",
    "handler_names",
    "load_handler",
    "run_action",
    "state_after",
]
