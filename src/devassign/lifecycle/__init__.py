"""Device lifecycle: per-type handlers that set devices up and clean them, and the libvirt XML.

Start with :func:`devassign.lifecycle.executor.run_action`; handlers act on the host only
through :class:`devassign.lifecycle.host.HostOps`, check every name that becomes a sysfs path
with :mod:`devassign.lifecycle.names`, and the agent runs only what its
:class:`devassign.lifecycle.policy.LifecyclePolicy` allows. See docs/lifecycle.md.
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
    ConfinedSysfs,
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
from devassign.lifecycle.policy import LifecyclePolicy
from devassign.lifecycle.registry import (
    UnknownHandlerError,
    handler_name_for,
    handler_names,
    load_handler,
)

__all__ = [
    "Action",
    "ActionResult",
    "ConfinedSysfs",
    "Facts",
    "Handler",
    "HandlerError",
    "HealthResult",
    "HostOps",
    "LifecycleDevice",
    "LifecyclePolicy",
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
