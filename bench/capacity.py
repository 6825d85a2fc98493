"""Time capacity and explain on one big host, and the selector checks (run by hand).

    python -m bench.capacity [--devices 20000] [--shape flat|pfs] [--db sqlite|postgresql] [--no-selectors]

One host reports ``--devices`` VFs through the store (``flat``: one parent, no IOMMU groups;
``pfs``: 64 VFs per PF, each VF in its own group), then ``Placer.capacity`` and
``Placer.explain`` run with and without a selector. Prints seconds of wall and CPU time per
call. Never run by the test suite: timings belong here, not in assertions.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from typing import Any

from bench.common import fresh_db, open_store

from devassign import schemas
from devassign.domain import Role
from devassign.scheduler import ClaimBody, RequestError, compile_selector
from devassign.server.placement import Placer
from devassign.store import Principal


def devices(n: int, shape: str) -> list[dict[str, Any]]:
    """``n`` VFs with unique PCI addresses (bus, device, function)."""
    out = []
    for i in range(n):
        bus, dev, fn = 0x10 + i // 256, (i // 8) % 32, i % 8
        pf = "0000:0f:00.0" if shape == "flat" else f"0000:0e:{(i // 64) % 32:02x}.{(i // 2048) % 8}"
        out.append(
            {
                "address": f"0000:{bus:02x}:{dev:02x}.{fn}",
                "kind": "sriov_vf",
                "type": "NIC_VF_1G",
                "vendor_id": "8086",
                "product_id": "154c",
                "numa_node": i % 2,
                "iommu_group": None if shape == "flat" else 1000 + i,
                "driver": "vfio-pci",
                "parent": pf,
                "attributes": {"physical_network": "physnet1", "tags": ["fast", f"t{i % 4}"]},
            }
        )
    return out


def timed(label: str, fn: Callable[[], Any]) -> Any:
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        out = fn()
    except Exception as exc:  # a refusal is a result too
        out = exc
    print(f"{label:<46} {time.perf_counter() - wall:8.3f} s wall {time.process_time() - cpu:8.3f} s cpu")
    return out


def selectors() -> None:
    """How long the checks take to refuse the selectors of the attack (no evaluation)."""
    lst = "[" + ",".join(["0"] * 100) + "]"
    four = "true"
    for i in range(4):
        four = f"{lst}.all(x{i}, {four})"
    maps = "device"
    for i in range(3):
        maps = f"{lst}.map(y{i}, {maps})"
    cases = {
        "4 nested all over 100-element lists": four,
        "3 nested map over 100-element lists": f"size({maps}) > 0",
        "5000 parentheses": "(" * 5000 + "true" + ")" * 5000,
        "1000 parentheses": "(" * 1000 + "true" + ")" * 1000,
    }
    for label, source in cases.items():
        out = timed(
            f"compile_selector: {label} ({len(source)} chars)", functools.partial(compile_selector, source)
        )
        print(f"    -> {out.message if isinstance(out, RequestError) else out}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--shape", choices=("flat", "pfs"), default="flat")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--no-selectors", action="store_true", help="skip the selector checks")
    args = parser.parse_args()
    if not args.no_selectors:
        selectors()
    store = open_store(fresh_db(args.db, "bench_capacity"))
    store.create_type(schemas.ResourceTypeCreate(name="NIC_VF_1G"), actor="bench")
    report = schemas.InventoryReport(generation=1, devices=devices(args.devices, args.shape))
    timed(
        f"report of {args.devices} devices ({args.shape})", lambda: store.apply_report("big", report, "bench")
    )
    placer = Placer(store)
    member = Principal(name="bench", role=Role.MEMBER, project="p1")
    plain = ClaimBody.model_validate({"requests": [{"name": "nic", "type": "NIC_VF_1G"}]})
    chosen = ClaimBody.model_validate(
        {
            "requests": [
                {
                    "name": "nic",
                    "type": "NIC_VF_1G",
                    "count": 2,
                    "selector": "device.attributes.tags.exists(t, t == 'fast')",
                }
            ]
        }
    )
    for label, body in (("", plain), (" (selector, 2 per claim)", chosen)):
        out = timed(f"capacity{label}", functools.partial(placer.capacity, body))
        print(f"    -> {out if isinstance(out, Exception) else {k: out[k] for k in ('total', 'truncated')}}")
        out = timed(f"explain{label}", functools.partial(placer.explain, body, member))
        print(f"    -> {out if isinstance(out, Exception) else out['summary']}")


if __name__ == "__main__":
    main()
