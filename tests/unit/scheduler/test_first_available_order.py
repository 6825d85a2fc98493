"""`first_available`: a request gets its own type wherever some choice of the other requests'
devices lets it, not only where the search's first choice of them did."""

from __future__ import annotations

from devassign.scheduler.fit import fit
from tests.unit.scheduler.helpers import device, host, req


def test_first_available_alternative_taken_while_own_type_fits_with_a_constraint() -> None:
    """r1's own type (GPU_A100, only on NUMA 1) fits next to r0's NIC on NUMA 1, yet the
    search keeps r0's first pick (NUMA 0, the smaller class) and gives r1 its alternative."""
    h = host(
        "h",
        [device("0000:10:00.0", "NIC", numa_node=0)],
        [device("0000:11:00.0", "NIC", numa_node=1), device("0000:12:00.0", "NIC", numa_node=1)],
        [device("0000:20:00.0", "GPU_A100", numa_node=1)],
        [device("0000:30:00.0", "GPU_T4", numa_node=0)],
    )
    request = req(
        {"name": "nic", "type": "NIC"},
        {"name": "gpu", "type": "GPU_A100", "first_available": [{"type": "GPU_T4"}]},
        constraints=[{"requests": ["nic", "gpu"], "match": "numa_node"}],
    )
    result = fit(h, request)
    assert result.chosen is not None
    gpu = {c.name: c for c in result.chosen}["gpu"]
    # nic on 0000:11:00.0 + gpu on 0000:20:00.0 (its own type) is a valid choice
    assert gpu.type == "GPU_A100", f"took first_available {gpu.type} while GPU_A100 fits"
