"""An old agent process's work results racing the report of the host's new process.

The work fence checks that the results come from the agent process on record; the check and
the lock of the host must be one read, or a report that takes the host over between them lets
the old process's results apply after the takeover (a machine that just lost the host reporting
its devices clean).
"""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from devassign import errors, schemas
from devassign.store import Store

OLD, NEW = "old-process-1", "new-process-2"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_results_of_a_process_replaced_while_they_wait_for_the_host_are_refused(store: Store) -> None:
    store.create_type(schemas.ResourceTypeCreate(name="GPU"), "admin")
    dev = schemas.ReportedDevice(address="0000:10:00.0", kind="pci", type="GPU")
    report = schemas.InventoryReport(generation=1, devices=[dev], agent_instance=OLD)
    store.apply_report("h1", report, "agent")
    [device] = store.list_devices(host="h1")
    result = schemas.WorkResult(device_id=device.id, action="cleanup", ok=True)

    outcome: dict[str, object] = {}

    def old_agent_answers() -> None:
        try:
            outcome["old"] = store.apply_work_results("h1", [result], "agent", instance=OLD)
        except errors.DevassignError as exc:
            outcome["old"] = exc.code

    with store.db.engine.connect() as takeover:  # the new process's report, holding the host
        takeover.execute(sa.text("SELECT id FROM hosts WHERE name = 'h1' FOR NO KEY UPDATE"))
        takeover.execute(sa.text(f"UPDATE hosts SET agent_instance = '{NEW}' WHERE name = 'h1'"))
        worker = threading.Thread(target=old_agent_answers)
        worker.start()
        time.sleep(0.5)  # the old process's results now wait for the host
        takeover.commit()
    worker.join(30)
    assert not worker.is_alive()
    assert outcome["old"] == errors.AGENT_CONFLICT, outcome
