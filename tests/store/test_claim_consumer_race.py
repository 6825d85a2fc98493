"""A consumer id recorded by another project while a claim is being made (PostgreSQL).

The claim records its consumer and inserts its allocation in one statement. When another
transaction records the same consumer id for another project and commits while that statement
waits on it, the statement's snapshot knows neither project: the claim must start again and
answer the conflict, never hold an allocation under the other project's consumer.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from devassign import errors, schemas
from devassign.domain import Role
from devassign.scheduler import ClaimBody
from devassign.server.placement import Placer
from devassign.store import Principal, Store
from devassign.store.schema import allocations, consumers, devices, hosts


def _one_gpu_host(store: Store) -> Placer:
    store.create_type(schemas.ResourceTypeCreate(name="GPU"), "admin")
    devs = [schemas.ReportedDevice(address="0000:10:00.0", kind="pci", type="GPU")]
    store.apply_report("h1", schemas.InventoryReport(generation=1, devices=devs), "agent")
    return Placer(store)


def _claim_in_a_thread(placer: Placer, body: ClaimBody) -> tuple[threading.Thread, list[object]]:
    """The claim, started in a thread; its answer (or exception) lands in the list."""
    answers: list[object] = []

    def claim() -> None:
        try:
            answers.append(placer.claim(body, Principal(name="admin", role=Role.ADMIN)))
        except BaseException as exc:
            answers.append(exc)

    t = threading.Thread(target=claim)
    t.start()
    return t, answers


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_consumer_recorded_meanwhile_by_another_project_is_a_conflict(store: Store) -> None:
    placer = _one_gpu_host(store)
    other = store.db.engine.connect()
    other.begin()
    other.execute(consumers.insert().values(uuid="vm-1", project="theirs", created_at=datetime.now(UTC)))
    body = ClaimBody(consumer="vm-1", project="mine", extra_specs={"hardware_resource:GPU": "1"})
    t, answers = _claim_in_a_thread(placer, body)
    time.sleep(1.0)  # the claim's statement now waits on the uncommitted consumer row
    assert not answers, "the claim should wait for the other transaction"
    other.commit()
    other.close()
    t.join(timeout=60)
    assert len(answers) == 1
    exc = answers[0]
    assert isinstance(exc, errors.DevassignError), exc
    assert exc.code == errors.CONSUMER_CONFLICT
    assert "theirs" not in exc.message  # the other project is not named
    with store.db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(allocations)).scalar_one() == 0
        states = conn.execute(sa.select(devices.c.state)).scalars().all()
    assert states == ["available"]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_replay_committed_while_its_resend_waits_answers_the_replay(store: Store) -> None:
    """The first claim of vm-1 holds the host and commits its allocation while a resend of the
    same claim (same project, same key) waits for the host: the resend answers that
    allocation (a replay), not a conflict with "another project"."""
    placer = _one_gpu_host(store)
    body = ClaimBody(
        consumer="vm-1", project="mine", idempotency_key="k", extra_specs={"hardware_resource:GPU": "1"}
    )
    first = store.db.engine.connect()
    first.begin()
    host_id = first.execute(
        sa.select(hosts.c.id).where(hosts.c.name == "h1").with_for_update(key_share=True)
    ).scalar_one()
    t, answers = _claim_in_a_thread(placer, body)
    time.sleep(1.0)  # the resend waits for the host (or, on its second try, skips it)
    now = datetime.now(UTC)
    first.execute(consumers.insert().values(uuid="vm-1", project="mine", created_at=now))
    first.execute(
        allocations.insert().values(
            consumer="vm-1", project="mine", host_id=host_id, state="reserved", idempotency_key="k",
            request=body.model_dump(mode="json", exclude_none=True), created_at=now,
        )
    )  # fmt: skip
    first.commit()
    first.close()
    t.join(timeout=60)
    assert len(answers) == 1
    answer = answers[0]
    assert isinstance(answer, tuple), answer
    allocation, created = answer
    assert created is False and allocation.consumer == "vm-1" and allocation.host == "h1"
