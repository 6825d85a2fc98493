"""Requests through the CLI as users call them, against a real server: explain's exit status
and the ranking policy, capacity of a request file, the types' counts with a host down, the
claims commands' help and messages, and libvirt-xml's exit codes."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devassign.server.settings import Settings, placement_with, settings_from_env, settings_to_env
from tests.conftest import vf
from tests.e2e.servers import cli, running_server

pytestmark = pytest.mark.slow

CLAIMS_COMMANDS = (
    ["claim"],
    ["explain"],
    ["release"],
    ["capacity"],
    ["libvirt-xml"],
    ["device", "clear"],
    ["quota"],
    ["quota", "set"],
    ["quota", "list"],
)


def _report(url: str, name: str, devices: list[dict[str, object]], generation: int = 1) -> None:
    r = httpx.put(f"{url}/v1/hosts/{name}/inventory", json={"generation": generation, "devices": devices})
    assert r.status_code == 200, r.text


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A server ranking by spread with its own weights, a type, and one host of 3 VFs: two
    on NUMA node 1, one on node 0."""
    extra = ("--policy", "spread", "--numa-weight", "2", "--fragmentation-weight", "0")
    with running_server(
        f"sqlite:///{tmp_path / 'req.db'}", auth=False, log=tmp_path / "server.log", extra=extra
    ) as url:
        env = {"DEVASSIGN_URL": url}
        cli("type", "create", "NIC_VF_1G", env=env)
        _report(
            url,
            "compute-1",
            [
                vf("0000:3b:02.1", numa_node=0),
                vf("0000:3b:02.2", numa_node=1),
                vf("0000:3b:02.3", numa_node=1),
            ],
        )
        yield env


def test_explain_exits_1_when_nothing_fits_and_shows_the_policy(cloud: dict[str, str]) -> None:
    fits = cli("explain", "--spec", "hardware_resource:NIC_VF_1G=1", env=cloud)
    assert "1 of 1 hosts fit" in fits.stdout and "fits on compute-1" in fits.stdout
    assert "hosts ranked by: spread (weights: spread 1, numa 2, fragmentation 0)" in fits.stdout

    too_many = cli("explain", "--spec", "hardware_resource:NIC_VF_1G=4", env=cloud, check=False)
    assert too_many.returncode == 1, too_many.stderr
    # The real reason, from the pre-filter: not "0 hosts considered".
    assert "no host fits: 1 up host with too few free NIC_VF_1G" in too_many.stdout
    assert "considered" not in too_many.stdout

    as_json = cli("explain", "--spec", "hardware_resource:NIC_VF_1G=4", "-f", "json", env=cloud, check=False)
    assert as_json.returncode == 1
    body = json.loads(as_json.stdout)
    assert body["fits"] is False
    assert body["policy"] == {"mode": "spread", "weights": {"spread": 1.0, "numa": 2.0, "fragmentation": 0.0}}
    ok = json.loads(cli("explain", "--spec", "hardware_resource:NIC_VF_1G=1", "-f", "json", env=cloud).stdout)
    assert ok["fits"] is True and set(ok["placements"][0]["scores"]) == {"spread", "numa", "fragmentation"}

    # A malformed request is usage (2), never the 1 of "does not fit".
    for spec in ("hardware_resource:NIC_VF_1G=0", "hardware_resource:NIC_VF_1G=abc"):
        bad = cli("explain", "--spec", spec, env=cloud, check=False)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, (spec, bad.stderr)


def test_capacity_counts_the_cloud_a_page_at_a_time(cloud: dict[str, str], tmp_path: Path) -> None:
    """With no host named, the CLI walks the candidate hosts a page at a time and adds the
    pages up: one host a page gives the answer of one page of a thousand."""
    url = cloud["DEVASSIGN_URL"]
    for i, n in enumerate((2, 4, 1)):
        _report(url, f"more-{i}", [vf(f"0000:3b:02.{k}") for k in range(n)])
    spec = ("--spec", "hardware_resource:NIC_VF_1G=1", "-f", "json")
    whole = json.loads(cli("capacity", *spec, env=cloud).stdout)
    assert whole["total"] == 10 and len(whole["per_host"]) == 4 and "next" not in whole
    assert json.loads(cli("capacity", *spec, "--page-size", "1", env=cloud).stdout) == whole
    request = tmp_path / "two.json"
    request.write_text(json.dumps({"requests": [{"name": "nic", "type": "NIC_VF_1G", "count": 2}]}))
    paged = json.loads(
        cli("capacity", "--request", str(request), "--page-size", "3", "-f", "json", env=cloud).stdout
    )
    assert paged["per_host"] == {"compute-1": 1, "more-0": 1, "more-1": 2} and paged["total"] == 4
    table = cli("capacity", "--spec", "hardware_resource:NIC_VF_1G=1", "--page-size", "2", env=cloud).stdout
    assert "total: 10 instances" in table and "more-2" in table


def test_a_claim_takes_its_consumer_from_the_request_file(cloud: dict[str, str], tmp_path: Path) -> None:
    """A request file that names its consumer needs no ``--consumer``; one that does not, and
    no option, is a usage error that says what to add; the option wins over the file."""
    request = tmp_path / "one.json"
    request.write_text(
        json.dumps({"consumer": "vm-file", "requests": [{"name": "nic", "type": "NIC_VF_1G"}]})
    )
    made = json.loads(cli("claim", "--request", str(request), "-f", "json", env=cloud).stdout)
    assert made["consumer"] == "vm-file" and len(made["devices"]) == 1
    both = json.loads(
        cli("claim", "--consumer", "vm-opt", "--request", str(request), "-f", "json", env=cloud).stdout
    )
    assert both["consumer"] == "vm-opt"
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"requests": [{"name": "nic", "type": "NIC_VF_1G"}]}))
    refused = cli("claim", "--request", str(bare), env=cloud, check=False)
    assert refused.returncode == 2 and "--consumer" in refused.stderr and "Traceback" not in refused.stderr
    nothing = cli("claim", env=cloud, check=False)
    assert nothing.returncode == 2 and "--spec" in nothing.stderr


def test_capacity_takes_the_claims_request_file(cloud: dict[str, str], tmp_path: Path) -> None:
    request = tmp_path / "pair.json"
    request.write_text(
        json.dumps(
            {
                "consumer": "vm-1",  # a claim's file as it is: what capacity does not need is left out
                "requests": [
                    {"name": "nic", "type": "NIC_VF_1G", "count": 2, "selector": "device.numa_node >= 0"}
                ],
                "constraints": [{"requests": ["nic"], "match": "numa_node"}],
            }
        )
    )
    found = json.loads(cli("capacity", "--request", str(request), "-f", "json", env=cloud).stdout)
    assert found == {"total": 1, "per_host": {"compute-1": 1}, "truncated": False}  # node 1's pair
    table = cli("capacity", "--request", str(request), env=cloud).stdout
    assert "total: 1 instance\n" in table
    many = cli("capacity", "--spec", "hardware_resource:NIC_VF_1G=1", env=cloud).stdout
    assert "total: 3 instances" in many
    # The same request through the API's POST, and the GET with specs, agree with the claim.
    url = cloud["DEVASSIGN_URL"]
    by_post = httpx.post(f"{url}/v1/capacity", json={"extra_specs": {"hardware_resource:NIC_VF_1G": "3"}})
    assert by_post.status_code == 200 and by_post.json()["total"] == 1
    nothing = cli("capacity", env=cloud, check=False)
    assert nothing.returncode == 2 and "--request FILE.json" in nothing.stderr
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"requests": [{"name": "x", "type": "NOPE"}]}))
    refused = cli("capacity", "--request", str(unknown), env=cloud, check=False)
    assert refused.returncode == 1 and "unknown resource type NOPE" in refused.stderr


def test_claim_messages_agree_in_number(cloud: dict[str, str]) -> None:
    made = cli("claim", "--consumer", "vm-1", "--spec", "hardware_resource:NIC_VF_1G=1", env=cloud).stdout
    assert "vm-1: 1 device reserved on compute-1" in made
    two = cli("claim", "--consumer", "vm-2", "--spec", "hardware_resource:NIC_VF_1G=2", env=cloud).stdout
    assert "vm-2: 2 devices reserved on compute-1" in two
    refused = cli(
        "claim", "--consumer", "vm-3", "--spec", "hardware_resource:NIC_VF_1G=1", env=cloud, check=False
    )
    assert refused.returncode == 1 and "cannot place this request" in refused.stdout
    assert "no host fits: 1 up host with too few free NIC_VF_1G" in refused.stdout
    assert "0 hosts considered" not in refused.stdout + refused.stderr


def test_types_count_devices_of_down_hosts_apart(db_url: str, tmp_path: Path) -> None:
    with running_server(db_url, auth=False, log=tmp_path / "server.log", extra=("--down-after", "4")) as url:
        env = {"DEVASSIGN_URL": url}
        cli("type", "create", "NIC_VF_1G", env=env)
        _report(url, "gone", [vf("0000:3b:02.1"), vf("0000:3b:02.2")])
        time.sleep(4.5)  # "gone" is silent past --down-after
        _report(url, "here", [vf("0000:3b:02.1")])
        (counts,) = [t["counts"] for t in json.loads(cli("types", "-f", "json", env=env).stdout)]
        assert (counts["total"], counts["available"], counts["down"]) == (3, 1, 2)
        _report(url, "here", [vf("0000:3b:02.1")], generation=2)  # still up for the next question
        capacity = json.loads(
            cli("capacity", "--spec", "hardware_resource:NIC_VF_1G=1", "-f", "json", env=env).stdout
        )
        assert capacity["total"] == counts["available"]


def test_claims_commands_help(cloud: dict[str, str]) -> None:
    """Every command, argument and option has its help; a flag shows no value type; usage
    lines name arguments as users write them."""
    for words in CLAIMS_COMMANDS:
        shown = cli(*words, "-h", env={**cloud, "COLUMNS": "250"}).stdout
        usage = next(line for line in shown.splitlines() if "Usage:" in line)
        assert "{" not in usage and "}" not in usage, usage
        assert "<bool>" not in shown, f"devassign {' '.join(words)} -h shows a flag taking <bool>"
        rows = [line for line in shown.splitlines() if re.match(r"^│\s+\S", line)]
        assert rows, shown
        for line in rows:
            # A row of a panel (argument, option, command): its name, its value, and help text.
            in_row = re.sub(r"\[required\]|[│*]", "", line).split()
            assert len(in_row) >= 3, f"devassign {' '.join(words)}: no help for {line.strip()}"


def test_libvirt_xml_exit_codes(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'xml.db'}"
    admin = cli("token", "create", "--role", "admin", "--db", db).stdout.strip()
    with running_server(db, log=tmp_path / "server.log") as url:
        env = {"DEVASSIGN_URL": url, "DEVASSIGN_TOKEN": admin}
        cli("type", "create", "NIC_VF_1G", env=env)
        r = httpx.put(
            f"{url}/v1/hosts/compute-1/inventory",
            json={"generation": 1, "devices": [vf("0000:3b:02.1")]},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert r.status_code == 200, r.text
        cli("claim", "--consumer", "vm-1", "--spec", "hardware_resource:NIC_VF_1G=1", env=env)

        xml = cli("libvirt-xml", "--consumer", "vm-1", env=env)
        assert xml.stdout.count("<hostdev") == 1 and not xml.stdout.endswith("\n\n")
        # A declared resource has no element: said on stderr, not an empty success.
        cli("type", "create", "Encryption_card", env=env)
        card = {"address": "static:Encryption_card/0", "kind": "static", "type": "Encryption_card"}
        r = httpx.put(
            f"{url}/v1/hosts/compute-1/inventory",
            json={"generation": 2, "devices": [vf("0000:3b:02.1"), card]},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert r.status_code == 200 and not r.json()["refused"], r.text
        cli("claim", "--consumer", "vm-2", "--spec", "hardware_resource:Encryption_card=1", env=env)
        static = cli("libvirt-xml", "--consumer", "vm-2", env=env)
        assert static.stdout == "" and "have no libvirt element" in static.stderr
        unknown = cli("libvirt-xml", "--consumer", "vm-9", env=env, check=False)
        assert unknown.returncode == 1 and "[allocation_not_found]" in unknown.stderr
        denied = cli(
            "libvirt-xml", "--consumer", "vm-1", env={**env, "DEVASSIGN_TOKEN": "da_wrong"}, check=False
        )
        assert denied.returncode == 4 and "[unauthenticated]" in denied.stderr
        not_devassign = cli(
            "libvirt-xml",
            "--consumer",
            "vm-1",
            env={**env, "DEVASSIGN_URL": f"{url}/nothing-here"},
            check=False,
        )
        assert not_devassign.returncode == 1 and "Traceback" not in not_devassign.stderr
    gone = cli("libvirt-xml", "--consumer", "vm-1", env=env, check=False)
    assert gone.returncode == 3 and "cannot reach the devassign server" in gone.stderr
    for result in (unknown, denied, not_devassign, gone):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_every_worker_process_ranks_by_the_same_policy() -> None:
    """``devassign server --workers N`` hands its settings to the workers as JSON."""
    placement = placement_with(mode="spread", binpack_weight=3, numa_weight=0, fragmentation_weight=0.25)
    back = settings_from_env(settings_to_env(Settings(db_url="sqlite:///x.db", placement=placement)))
    assert back.placement.policy == placement.policy
    assert (back.placement.policy.mode, back.placement.policy.numa_weight) == ("spread", 0.0)
    with pytest.raises(ValueError, match="pack or spread"):
        placement_with(mode="random")
    with pytest.raises(ValueError, match="0 or more"):
        placement_with(numa_weight=float("nan"))


def test_an_empty_consumer_or_too_many_instances_fail_instead_of_pretending(cloud: dict[str, str]) -> None:
    """``release --consumer ''`` reached ``DELETE /v1/allocations/``, which redirects: the CLI
    said "released" and exited 0; a gang of 10^11 instances was built in memory first."""
    empty = cli("release", "--consumer", "", env=cloud, check=False)
    assert empty.returncode != 0 and "released" not in empty.stdout, empty.stdout
    huge = cli(
        "gang",
        "claim",
        "--spec",
        "hardware_resource:NIC_VF_1G=1",
        "--instances",
        "99999999999",
        env=cloud,
        check=False,
    )
    assert huge.returncode == 2 and "1000" in huge.stderr, huge.stderr
