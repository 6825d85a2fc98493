"""The handler for declared resources: nothing on the host to set up or clean."""

from __future__ import annotations

from devassign.lifecycle.base import Facts, HealthResult, LifecycleDevice, TypeConfig
from devassign.lifecycle.host import HostOps


class NoopHandler:
    def setup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> Facts:
        return {}

    def cleanup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> None:
        return None

    def health(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> HealthResult:
        return HealthResult(ok=True)
