"""Handlers by name, through the ``devassign.handlers`` entry points.

A third party ships a handler as its own package by declaring an entry point in that
group; the resource type names it. A type that names none gets the built-in one for the
device's kind.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from devassign.domain import DeviceKind
from devassign.lifecycle.base import Handler, HandlerError

GROUP = "devassign.handlers"

DEFAULT_FOR_KIND: dict[DeviceKind, str] = {
    DeviceKind.PCI: "pci",
    DeviceKind.SRIOV_PF: "pci",
    DeviceKind.SRIOV_VF: "sriov_vf",
    DeviceKind.MDEV_TYPE: "mdev",
    DeviceKind.USB: "usb",
    DeviceKind.STATIC: "noop",
    DeviceKind.VGPU: "nvidia_vgpu",
    DeviceKind.MIG: "mig",
}


class UnknownHandlerError(HandlerError):
    """No installed package provides a handler of that name."""


def handler_names() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def handler_name_for(kind: DeviceKind | str, configured: str | None = None) -> str:
    """The handler a device uses: the type's, else the built-in one for its kind."""
    return configured or DEFAULT_FOR_KIND[DeviceKind(kind)]


def load_handler(name: str) -> Handler:
    """Load and instantiate the handler called ``name``; refuses names nobody installed."""
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        known = ", ".join(handler_names()) or "none"
        raise UnknownHandlerError(
            f"no lifecycle handler {name!r} is installed (entry point group {GROUP}; known: {known})"
        )
    try:
        obj = found[0].load()()
    except Exception as exc:
        raise HandlerError(f"cannot load handler {name!r} ({found[0].value}): {exc}") from exc
    missing = [m for m in ("setup", "cleanup", "health") if not callable(getattr(obj, m, None))]
    if missing:
        raise HandlerError(f"handler {name!r} ({found[0].value}) lacks {', '.join(missing)}")
    handler: Handler = obj
    return handler
