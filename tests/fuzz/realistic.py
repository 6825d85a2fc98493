"""Bodies that are nearly right: the OpenAPI document cannot say that a claim's types must
exist, that a selector is CEL, that a spec reads ``hardware_resource:T=N`` or that an agent
reports addresses of its kind, so schemathesis' own cases almost all stop at the first 400.
These strategies draw from the seeded inventory's names and from CEL, spec, param and address
spellings near their edges, so cases reach the scheduler, the claims, the params checks and
the inventory code. Every answer is checked as any other case's.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

TYPES = ["NIC_VF_1G", "GPU_A100", "Encryption_card", "NO_SUCH_TYPE"]
HOSTS = ["compute-1", "compute-2", "compute-9", "a" * 253]
CONSUMERS = ["6f1c0b4e", "vm-1", "vm-2", "ns:vm-3", "a" * 64]
PROJECTS = ["demo", "other", None]
ATTRIBUTES = [
    "numa_node",
    "parent",
    "pcie_root",
    "iommu_group",
    "address",
    "vendor_id",
    "driver",
    "attributes.physical_network",
    "attributes.memory_mib",
    "attributes.nope",
    "",
    "kind",
]

SELECTORS = [
    "device.attributes.memory_mib >= 40960",
    "device.numa_node == 0",
    'device.vendor_id == "8086"',
    'device.attributes.physical_network == "physnet1"',
    '"memory_mib" in device.attributes',
    'device.address.startsWith("0000:3b")',
    "device.attributes.memory_mib > 1.5",
    "device.attributes.nope == 1",
    "device.numa_node / 0 == 1",
    "device.numa_node % 0 == 0",
    "size(device.attributes) > 0",
    "device.attributes.memory_mib * 9223372036854775807 > 0",
    "-9223372036854775807 - 1 - device.numa_node < 0",
    "uint(device.numa_node) - 1u > 0u",
    'device.address.matches("^0000")',
    "device.address.matches(device.parent)",
    'device.attributes.exists(k, k == "memory_mib")',
    "[1, 2, 3].all(x, x > 0)",
    "[[1].all(x, [2].all(y, [3].all(z, z > x + y)))].size() > 0",
    "device.iommu_group == null",
    "device.numa_node",
    "true",
    "false",
    "1 +",
    "",
    "device.foo",
    'device.attributes["memory_mib"] > 0',
    'duration("1s") > duration("0s")',
    'timestamp("2020-01-01T00:00:00Z") < timestamp("9999-12-31T23:59:59Z")',
    'string(device.numa_node) == "0"',
    'dyn(device.attributes.memory_mib) == "a"',
    "double(device.numa_node) / 0.0 > 1.0",
    'int("99999999999999999999") > 0',
    "device.attributes.memory_mib.size() > 0",
    "(" * 40 + "true" + ")" * 40,
    "device.numa_node in [0, 1, 2]",
    "device.numa_node == 0 ? true : 1",
    'device.attributes.physical_network + "x" == "physnet1x"',
    "has(device.attributes.memory_mib)",
    "has(device.nope)",
    'device.driver == "vfio-pci" && device.kind == "pci"',
    "\u0130\u212a == 1",
]


def selectors() -> st.SearchStrategy[str | None]:
    one = st.sampled_from(SELECTORS)
    both = st.tuples(one, st.sampled_from([" && ", " || "]), one).map("".join)
    return st.one_of(st.none(), one, both, st.text(max_size=40))


def counts() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(1, 3), st.sampled_from([0, -1, 256, 257, 2**31, 2**63, 2**64, "1", 1.0, True])
    )


def params() -> st.SearchStrategy[dict[str, Any]]:
    values = st.one_of(
        st.sampled_from([0, 1, 100, 4094, 4095, -1, 2**63, 2**64, True, "100", "", "x" * 2000]),
        st.sampled_from(["52:54:00:12:34:56", "52:54:00:12:34:5G", "01:00:5e:00:00:01", "52-54-00-12-34-56"]),
        st.text(max_size=10),
    )
    names = st.sampled_from(["vlan", "mac", "trust", "spoofchk", "link_state", "label", "mdev_uuid", "X"])
    return st.dictionaries(names, values, max_size=4)


def alternatives() -> st.SearchStrategy[list[dict[str, Any]]]:
    alt = st.fixed_dictionaries(
        {"type": st.sampled_from(TYPES)}, optional={"count": counts(), "selector": selectors()}
    )
    return st.lists(alt, max_size=9)


def requests() -> st.SearchStrategy[list[dict[str, Any]]]:
    one = st.fixed_dictionaries(
        {"type": st.sampled_from(TYPES)},
        optional={
            "name": st.sampled_from(["gpu", "nic", "a", "GPU", "x" * 64]),
            "count": counts(),
            "selector": selectors(),
            "params": params(),
            "first_available": alternatives(),
        },
    )
    return st.lists(one, max_size=5)


def constraints() -> st.SearchStrategy[list[dict[str, Any]]]:
    names = st.lists(st.sampled_from(["gpu", "nic", "a", "NIC_VF_1G", "GPU_A100", "nope"]), max_size=3)
    one = st.fixed_dictionaries(
        {},
        optional={
            "requests": st.one_of(st.none(), names),
            "match": st.one_of(st.none(), st.sampled_from(ATTRIBUTES)),
            "distinct": st.one_of(st.none(), st.sampled_from(ATTRIBUTES)),
        },
    )
    return st.lists(one, max_size=3)


def spec_text() -> st.SearchStrategy[str]:
    counts_text = st.sampled_from(
        ["1", "2", "256", "257", "0", "-1", "01", "+1", " 1", "1e3", "\u0663", "", "x"]
    )
    key = st.sampled_from(
        ["hardware_resource:", "hardware_resource:", "hardware:", "hw:", "HARDWARE_RESOURCE:"]
    )
    return st.tuples(key, st.sampled_from(TYPES), st.sampled_from(["=", ":", "=="]), counts_text).map("".join)


def extra_specs() -> st.SearchStrategy[dict[str, Any]]:
    key = st.one_of(
        st.sampled_from(TYPES).map(lambda t: f"hardware_resource:{t}"),
        st.sampled_from(["hw:cpu_policy", "hardware:x", "hardware_resource:", "resources:VGPU"]),
    )
    value = st.one_of(
        st.sampled_from(["1", "2", "0", "257", "\u0663", " 1", "01", "dedicated", "x" * 300]),
        st.sampled_from([1, 0, -1, 2**63]),
    )
    return st.dictionaries(key, value, max_size=3)


VALID_SELECTORS = [
    None,
    *SELECTORS[:7],
    "size(device.attributes) > 0",
    "device.numa_node in [0, 1, 2]",
    "true",
]


@st.composite
def valid_claim_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A claim most servers would take: known types, small counts, plain selectors."""
    names = draw(st.lists(st.sampled_from(["gpu", "nic", "card"]), min_size=1, max_size=3, unique=True))
    reqs = []
    for name in names:
        request: dict[str, Any] = {
            "name": name,
            "type": draw(st.sampled_from(TYPES[:3])),
            "count": draw(st.integers(1, 2)),
        }
        selector = draw(st.sampled_from(VALID_SELECTORS))
        if selector is not None:
            request["selector"] = selector
        if request["type"] == "NIC_VF_1G" and draw(st.booleans()):
            request["params"] = {"vlan": draw(st.sampled_from([1, 100, 4094]))}
        if draw(st.integers(0, 3)) == 0:
            request["first_available"] = [{"type": draw(st.sampled_from(TYPES[:3])), "count": 1}]
        reqs.append(request)
    body: dict[str, Any] = {"consumer": draw(st.sampled_from(CONSUMERS)), "requests": reqs}
    if draw(st.booleans()):
        body["project"] = "demo"
    if len(names) > 1 and draw(st.booleans()):
        body["constraints"] = [
            {"requests": names[:2], draw(st.sampled_from(["match", "distinct"])): "numa_node"}
        ]
    if draw(st.booleans()):
        body["idempotency_key"] = draw(st.sampled_from(["k1", "k2"]))
    return body


def claim_bodies() -> st.SearchStrategy[dict[str, Any]]:
    """The body of ``POST /v1/claims``, ``/v1/explain`` and ``/v1/capacity``: a valid claim,
    one with a field replaced by a noisy value, or noise throughout."""
    noisy = {
        "consumer": st.sampled_from(CONSUMERS),
        "project": st.sampled_from(PROJECTS),
        "requests": requests(),
        "constraints": constraints(),
        "hosts": st.lists(st.sampled_from(HOSTS), max_size=3),
        "extra_specs": extra_specs(),
        "idempotency_key": st.sampled_from(["k1", "k2", "x" * 128]),
    }

    @st.composite
    def one_noisy_field(draw: st.DrawFn) -> dict[str, Any]:
        body = draw(valid_claim_bodies())
        key = draw(st.sampled_from(sorted(noisy)))
        body[key] = draw(noisy[key])
        return body

    return st.one_of(valid_claim_bodies(), one_noisy_field(), st.fixed_dictionaries({}, optional=noisy))


def capacity_queries() -> st.SearchStrategy[dict[str, Any]]:
    """The query of ``GET /v1/capacity``."""
    return st.fixed_dictionaries(
        {"spec": st.lists(spec_text(), min_size=1, max_size=3)},
        optional={"host": st.lists(st.sampled_from(HOSTS), min_size=1, max_size=3)},
    )


ADDRESSES = {
    "sriov_vf": ["0000:3b:02.0", "0000:3b:02.1", "0000:3b:02.7", "0000:3B:02.0", "0000:3b:02"],
    "pci": ["0000:af:00.0", "0000:d8:00.0", "0000:af:00.0 "],
    "sriov_pf": ["0000:3b:00.0"],
    "mdev_type": ["0000:af:00.0/nvidia-230/0", "0000:af:00.0/nvidia-230/1", "0000:af:00.0//0"],
    "usb": ["usb:0529:0620:12345", "usb:1-2.3", "usb:"],
    "static": ["token-1", "token/2", "a" * 256, "a b"],
}


@st.composite
def devices(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(ADDRESSES)))
    device: dict[str, Any] = {
        "address": draw(st.sampled_from(ADDRESSES[kind])),
        "kind": kind,
        "type": draw(st.sampled_from(TYPES)),
    }
    optional = {
        "vendor_id": st.sampled_from(["8086", "10de", "ABCD", "0x8086"]),
        "product_id": st.sampled_from(["1889", "20b2"]),
        "numa_node": st.sampled_from([0, 1, 1024, 1025, -1, None, True]),
        "iommu_group": st.sampled_from([0, 40, 2**31 - 1, 2**31, None]),
        "driver": st.sampled_from(["iavf", "vfio-pci", "", "x" * 129]),
        "parent": st.sampled_from(["0000:3b:00.0", "0000:af:00.0", "", None]),
        "healthy": st.sampled_from([True, False, "no"]),
        "attributes": st.dictionaries(
            st.sampled_from(["memory_mib", "resettable", "physical_network", "pcie_root", "x"]),
            st.one_of(
                st.integers(-(2**70), 2**70),
                st.booleans(),
                st.text(max_size=8),
                st.none(),
                st.lists(st.integers(), max_size=3),
            ),
            max_size=4,
        ),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            device[key] = draw(strategy)
    return device


def inventory_reports() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "generation": st.sampled_from([0, 1, 2, 3, 2**63 - 1, 2**63]),
            "devices": st.lists(devices(), max_size=8),
        },
        optional={
            "host_id": st.sampled_from(["6f1c0b4e-0000-4000-8000-000000000001", "other-id", None]),
            "agent_instance": st.sampled_from(["fuzz-agent-1", "fuzz-agent-2", None]),
        },
    )


def param_specs() -> st.SearchStrategy[dict[str, Any]]:
    spec = st.fixed_dictionaries(
        {"type": st.sampled_from(["string", "integer", "boolean", "mac"])},
        optional={
            "min": st.sampled_from([0, 1, -(2**63), 2**63]),
            "max": st.sampled_from([0, 4094, 2**63 - 1]),
            "max_length": st.sampled_from([1, 64, 1024, 1025]),
            "pattern": st.sampled_from(["^[a-z]+$", "(a+)+$", "[", "a" * 257]),
            "allowed": st.lists(
                st.one_of(st.integers(-5, 5000), st.text(max_size=4), st.booleans()), max_size=4
            ),
            "allowed_by_project": st.dictionaries(
                st.sampled_from(["demo", "other", "bad project"]),
                st.lists(st.integers(0, 5000), max_size=3),
                max_size=2,
            ),
        },
    )
    names = st.sampled_from(["vlan", "mac", "trust", "label", "link_state", "mdev_uuid", "Bad", "a" * 65])
    return st.dictionaries(names, spec, max_size=3)


def type_bodies() -> st.SearchStrategy[dict[str, Any]]:
    """``POST /v1/resource-types`` (and, without the name, ``PATCH``)."""
    config = st.dictionaries(
        st.sampled_from(["reset", "one_time_use", "spoofchk", "trust", "link_state", "x"]),
        st.one_of(st.sampled_from(["none-ok", "auto", "enable", True, False, 1]), st.text(max_size=5)),
        max_size=3,
    )
    return st.fixed_dictionaries(
        {"name": st.sampled_from([*TYPES, "NEW_TYPE", "x" * 64])},
        optional={
            "description": st.text(max_size=20),
            "handler": st.sampled_from(["noop", "sriov_vf", "pci", "nope", None]),
            "config": config,
            "params": param_specs(),
            "attribute_schema": st.one_of(st.none(), st.just({"memory_mib": {"type": "integer"}})),
        },
    )


def work_results(device_ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    result = st.fixed_dictionaries(
        {
            "device_id": st.sampled_from([*device_ids, "nope", ""]),
            "action": st.sampled_from(["setup", "cleanup"]),
            "ok": st.booleans(),
        },
        optional={
            "error": st.one_of(st.none(), st.text(max_size=20)),
            "facts": st.dictionaries(
                st.sampled_from(["mdev_uuid", "original_driver", "pf_ifname", "vf_index", "x"]),
                st.one_of(st.text(max_size=10), st.integers(-(2**70), 2**70), st.none()),
                max_size=3,
            ),
            "consumer": st.sampled_from([*CONSUMERS, None]),
        },
    )
    return st.fixed_dictionaries({"results": st.lists(result, max_size=4)})
