"""Fuzz the API with schemathesis, as an admin, a project member and a host's agent.

For each of the three identities the harness starts the application in process (ASGI) on a
fresh database with a small, realistic inventory, loads the OpenAPI document the server serves
(``GET /openapi.json``), and sends:

- schemathesis' cases for every operation of the document, valid and invalid data
  (``GenerationMode.POSITIVE`` and ``NEGATIVE``);
- the stateful phase: schemathesis' state machine, which chains operations through the links
  it infers from the document (a created type is read, patched, deleted; a claim's consumer is
  read and released...), a few steps per scenario;
- nearly right bodies, names and queries (``tests/fuzz/realistic.py``: known types, CEL
  selectors, specs, params, inventory reports near their edges), which get past the first 400
  to the scheduler, the claims and the inventory code;
- hostile JSON bodies (``tests/fuzz/hostile.py``) to every operation that takes a body.

The document declares no links; the stateful phase uses those schemathesis infers from it
(types, hosts, devices, allocations, tokens listed) and :data:`LINKS`, which the harness adds
to its own copy of the document (a created token revoked, a reported host read, renamed,
forgotten). A token the fuzzer revokes is made again (:class:`Identity`).

Every response is checked with schemathesis' ``not_a_server_error``,
``response_schema_conformance``, ``status_code_conformance`` and ``content_type_conformance``,
plus :func:`stable_error_body`: an error answers ``{"error": {"code", "message"}}`` with a code
of ``devassign.errors`` and that code's status. A hostile body must get a 4xx.

What is not fuzzed, and why: the dashboard (``/ui``: HTML, not in the OpenAPI document) and
``/healthz``, ``/metrics``, ``/docs``, ``/redoc`` (not in the document either), and the
server-sent events of ``GET /v1/events/stream`` (:data:`STREAMING`): a stream that never ends
would hold its case forever. Nothing else is left out.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.errors
import schemathesis
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.generation.stateful import run_state_machine_as_test
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devassign import errors, schemas
from devassign.domain import Role
from devassign.server.app import create_app
from devassign.server.settings import Settings
from devassign.store import Database, Store
from devassign.store.schema import metadata
from tests.fuzz import realistic
from tests.fuzz.hostile import EXAMPLES, hostile_bodies

PG_ADMIN_URL = os.environ.get("DEVASSIGN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ROLES = (Role.ADMIN, Role.MEMBER, Role.AGENT)
HOST = "compute-1"
PROJECT = "demo"
AGENT_INSTANCE = "fuzz-agent-1"


# ---------------------------------------------------------------- the checks


def stable_error_body(ctx: Any, response: Any, case: Case[Any]) -> bool | None:
    """An error (4xx, 5xx) is ``{"error": {"code": ..., "message": ...}}`` with a stable code,
    answered with that code's status."""
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{response.status_code} without a JSON body: {response.text[:200]!r}") from None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        raise AssertionError(f"{response.status_code} without the error body: {str(body)[:200]}")
    code = error.get("code")
    if code not in errors.STATUS:
        raise AssertionError(f"{response.status_code} with an unknown error code {code!r}")
    if errors.STATUS[code] != response.status_code:
        raise AssertionError(f"code {code!r} is a {errors.STATUS[code]}, answered {response.status_code}")
    return None


CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    stable_error_body,
]


# ---------------------------------------------------------------- the report


@dataclass
class Found:
    """One distinct failure: where, which check, what; with how often it was seen."""

    role: str
    phase: str
    operation: str
    check: str
    status: int | None
    message: str
    example: str
    count: int = 1


@dataclass
class Report:
    db: str
    seed: int
    target: int
    cases: dict[str, dict[str, int]] = field(default_factory=dict)  # role -> phase -> cases
    server_errors: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)  # "role METHOD /path status"
    failures: dict[tuple[str, str, str, str], Found] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(sum(phases.values()) for phases in self.cases.values())

    def count(self, role: str, phase: str) -> None:
        phases = self.cases.setdefault(role, {})
        phases[phase] = phases.get(phase, 0) + 1

    def add(self, found: Found) -> None:
        key = (found.role, found.operation, found.check, found.message[:120])
        if key in self.failures:
            self.failures[key].count += 1
        else:
            self.failures[key] = found

    def as_json(self) -> dict[str, Any]:
        return {
            "db": self.db,
            "seed": self.seed,
            "target_cases": self.target,
            "cases": self.total,
            "cases_per_token": {role: sum(p.values()) for role, p in self.cases.items()},
            "cases_per_phase": self.cases,
            "server_errors": self.server_errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "by_operation": dict(sorted(self.by_operation.items())),
            "failures": [vars(f) for f in self.failures.values()],
            "seconds": round(self.seconds, 1),
        }

    def text(self) -> str:
        lines = [
            f"devassign API fuzzing on {self.db}, seed {self.seed}: "
            f"{self.total} cases in {self.seconds:.0f} s",
        ]
        for role, phases in self.cases.items():
            parts = ", ".join(f"{phase} {n}" for phase, n in phases.items())
            lines.append(f"  {role:<7} {sum(phases.values()):>6} cases ({parts})")
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        lines.append(f"  statuses: {statuses}")
        lines.append(f"  5xx responses: {self.server_errors}; distinct failures: {len(self.failures)}")
        for f in self.failures.values():
            lines.append(
                f"  FAIL [{f.role}/{f.phase}] {f.operation}: {f.check} (status {f.status}, seen {f.count}x)"
            )
            lines.extend(f"      {line}" for line in f.message.splitlines()[:8])
            lines.append(f"      {f.example[:600]}")
        return "\n".join(lines)


# ---------------------------------------------------------------- the server under test


def _fresh_pg_database() -> contextlib.AbstractContextManager[str]:
    @contextlib.contextmanager
    def database() -> Iterator[str]:
        name = f"devassign_fuzz_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        try:
            yield url
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

    return database()


def _truncate(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
        conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


def _vf(address: str, numa: int) -> dict[str, Any]:
    return {
        "address": address,
        "kind": "sriov_vf",
        "type": "NIC_VF_1G",
        "vendor_id": "8086",
        "product_id": "1889",
        "numa_node": numa,
        "iommu_group": None,
        "driver": "iavf",
        "parent": "0000:3b:00.0",
        "attributes": {"physical_network": "physnet1"},
    }


def _gpu(address: str, numa: int) -> dict[str, Any]:
    return {
        "address": address,
        "kind": "pci",
        "type": "GPU_A100",
        "vendor_id": "10de",
        "product_id": "20b2",
        "numa_node": numa,
        "iommu_group": 40 + numa,
        "driver": "vfio-pci",
        "attributes": {"memory_mib": 81920, "resettable": True},
    }


class Identity:
    """One of the three tokens; made again (same role and scope) when the fuzzer revokes it, so
    the rest of the run is not a stream of 401s."""

    def __init__(self, store: Store, role: Role) -> None:
        self.store = store
        self.role = role
        self.secret = ""
        self.id = 0
        self.renew()

    def renew(self) -> None:
        body = schemas.TokenCreate(
            role=self.role,
            host=HOST if self.role is Role.AGENT else None,
            project=PROJECT if self.role is Role.MEMBER else None,
        )
        created = self.store.create_token(body, "fuzz")
        self.secret, self.id = created.token, created.id

    def headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.secret}"}
        if self.role is Role.AGENT:
            headers[schemas.AGENT_INSTANCE_HEADER] = AGENT_INSTANCE
        return headers


def _seed(app: FastAPI, ids: dict[Role, Identity]) -> None:
    """Types, two hosts with devices (one reported by its agent), a claim, a quota, a
    quarantined device."""
    client = TestClient(app, raise_server_exceptions=True)
    admin = ids[Role.ADMIN].headers()

    def ok(response: Any) -> None:
        assert response.is_success, (response.request.url, response.status_code, response.text)

    ok(
        client.post(
            "/v1/resource-types",
            headers=admin,
            json={
                "name": "NIC_VF_1G",
                "description": "VF of an E810",
                "params": {"mac": {"type": "mac"}, "vlan": {"type": "integer", "min": 1, "max": 4094}},
            },
        )
    )
    ok(client.post("/v1/resource-types", headers=admin, json={"name": "GPU_A100", "description": "A100"}))
    ok(client.post("/v1/resource-types", headers=admin, json={"name": "Encryption_card"}))
    report = {
        "generation": 1,
        "host_id": "6f1c0b4e-0000-4000-8000-000000000001",
        "agent_instance": AGENT_INSTANCE,
        "devices": [
            *(_vf(f"0000:3b:02.{i}", i % 2) for i in range(4)),
            _gpu("0000:af:00.0", 0),
            _gpu("0000:d8:00.0", 1),
        ],
    }
    ok(client.put(f"/v1/hosts/{HOST}/inventory", headers=ids[Role.AGENT].headers(), json=report))
    other = {"generation": 1, "devices": [_vf("0000:5e:02.0", 0), _vf("0000:5e:02.1", 1)]}
    ok(client.put("/v1/hosts/compute-2/inventory", headers=admin, json=other))
    ok(client.put(f"/v1/quotas/{PROJECT}/GPU_A100", headers=admin, json={"limit": 2}))
    claim = {
        "consumer": "6f1c0b4e",
        "project": PROJECT,
        "requests": [
            {"name": "nic", "type": "NIC_VF_1G", "params": {"vlan": 100}},
            {"name": "gpu", "type": "GPU_A100"},
        ],
    }
    ok(client.post("/v1/claims", headers=ids[Role.MEMBER].headers(), json=claim))
    # A device whose cleanup failed (quarantined), for POST /v1/devices/{device_id}/clear: a
    # claim released, and its agent reporting the cleanup as failed.
    agent = ids[Role.AGENT].headers()
    held = {"consumer": "vm-q", "project": PROJECT, "requests": [{"name": "gpu", "type": "GPU_A100"}]}
    ok(client.post("/v1/claims", headers=ids[Role.MEMBER].headers(), json=held))
    ok(client.delete("/v1/allocations/vm-q", headers=ids[Role.MEMBER].headers()))
    work = client.get(f"/v1/hosts/{HOST}/work", headers=agent)
    ok(work)
    failed = [
        {"device_id": item["device"]["id"], "action": "cleanup", "ok": False, "error": "reset failed"}
        for item in work.json()["items"]
        if item["action"] == "cleanup"
    ]
    assert failed, work.text
    ok(client.post(f"/v1/hosts/{HOST}/work", headers=agent, json={"results": failed}))


@dataclass
class Server:
    app: FastAPI
    store: Store
    ids: dict[Role, Identity]


@contextlib.contextmanager
def server(db: str) -> Iterator[Server]:
    """The application on a fresh database of kind ``db`` (``sqlite`` or ``postgresql``), seeded."""
    with contextlib.ExitStack() as stack:
        if db == "sqlite":
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="devassign-fuzz-"))
            url = f"sqlite:///{Path(folder) / 'devassign.db'}"
        elif db == "postgresql":
            url = stack.enter_context(_fresh_pg_database())
        else:
            raise ValueError(f"unknown database kind {db!r}")
        database = Database(url)
        database.upgrade()
        stack.callback(database.dispose)
        store = Store(database)
        app = create_app(Settings(db_url=url, auth=True, sweep_interval=0), store=store)
        ids = {role: Identity(store, role) for role in ROLES}
        _seed(app, ids)
        yield Server(app, store, ids)


# ---------------------------------------------------------------- the fuzzing


class Runner:
    """Sends cases as one identity, checks the answers, keeps that identity alive."""

    def __init__(self, srv: Server, role: Role, report: Report, budget: int) -> None:
        self.srv = srv
        self.role = role
        self.identity = srv.ids[role]
        self.report = report
        self.budget = budget  # cases left to send in the current phase
        self.phase = ""

    def send(self, case: Case[Any], *, hostile: bool = False) -> Any:
        headers = self.identity.headers()
        self.report.count(self.role.value, self.phase)
        self.budget -= 1
        try:
            response = case.call(headers=headers)
        except Exception as exc:  # the application raised through the ASGI transport
            self.report.server_errors += 1
            self._found(case, "exception", None, f"{type(exc).__name__}: {exc}", headers)
            return None
        self.report.statuses[response.status_code] += 1
        self.report.by_operation[f"{self.role.value} {case.operation.label} {response.status_code}"] += 1
        if response.status_code >= 500:
            self.report.server_errors += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            for failure in group.exceptions:
                self._failure(case, failure, response.status_code, headers)
        except Exception as exc:  # a check that could not run is reported, not fatal to the run
            self._found(case, "check_error", response.status_code, f"{type(exc).__name__}: {exc}", headers)
        if hostile and not 400 <= response.status_code < 500:
            self._found(
                case,
                "hostile_body_is_4xx",
                response.status_code,
                "a hostile JSON body was not refused",
                headers,
            )
        self._revive(case, response.status_code)
        return response

    def _failure(self, case: Case[Any], failure: Failure, status: int, headers: dict[str, str]) -> None:
        self._found(case, failure.title, status, failure.message, headers)

    def _found(
        self, case: Case[Any], check: str, status: int | None, message: str, headers: dict[str, str]
    ) -> None:
        key = (self.role.value, case.operation.label, check, message[:120])
        if key in self.report.failures:
            self.report.failures[key].count += 1
            return
        try:
            example = case.as_curl_command(headers=headers)
        except Exception:
            example = repr(case)
        if len(example) > 600:
            example = example[:600] + f"... ({len(example)} characters)"
        self.report.add(
            Found(self.role.value, self.phase, case.operation.label, check, status, message, example)
        )

    def _revive(self, case: Case[Any], status: int) -> None:
        """A revoked fuzzing token is made again, so later cases are not all 401."""
        revoked = (
            status == 200
            and case.operation.method.upper() == "DELETE"
            and case.operation.path == "/v1/tokens/{token_id}"
        )
        if revoked:
            for identity in self.srv.ids.values():
                if str(case.path_parameters.get("token_id")) == str(identity.id):
                    identity.renew()

    # -------------------------------------------------- phases

    def stateless(self, schema: Any, seed: int, cases: int) -> None:
        """Every operation, valid and invalid data, in rounds until ``cases`` are sent (an
        operation with few distinct inputs runs out early; the others make up for it)."""
        self.phase, self.budget = "stateless", cases
        runs = [
            (result.ok(), mode)
            for result in schema.get_all_operations()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
            if mode is GenerationMode.POSITIVE or _can_be_invalid(result.ok())
        ]
        for round_ in range(8):
            if self.budget <= 0 or not runs:
                return
            share = max(1, self.budget // len(runs))
            for i, (operation, mode) in enumerate(list(runs)):
                if self.budget <= 0:
                    return
                before = self.budget
                strategy = operation.as_strategy(generation_mode=mode)
                self._run(strategy, min(share, self.budget), seed + 1000 * round_ + i)
                if self.budget == before:  # nothing more to generate for it
                    runs.remove((operation, mode))

    def hostile(self, schema: Any, seed: int, cases: int) -> None:
        """Hostile JSON bodies to every operation that takes one: each of
        ``hostile.EXAMPLES``, then drawn ones."""
        self.phase, self.budget = "hostile", cases
        operations = [result.ok() for result in schema.get_all_operations() if result.ok().body]
        for operation in operations:
            for raw in EXAMPLES.values():
                self._run(
                    operation.as_strategy(body=raw, media_type="application/json"), 1, seed, hostile=True
                )
        share = max(1, self.budget // len(operations))
        for i, operation in enumerate(operations):
            strategy = hostile_bodies().flatmap(_cases_of(operation, lambda raw: {"body": raw}))
            self._run(strategy, min(share, max(self.budget, 1)), seed + 7 * i, hostile=True)

    def realistic(self, schema: Any, seed: int, cases: int) -> None:
        """Nearly right bodies and names (``tests/fuzz/realistic.py``), round-robin over the
        operations they are for, so claims meet the inventory changes made between them."""
        self.phase, self.budget = "realistic", cases
        plans = _realistic_plans(_device_ids(self.srv))
        operations = {result.ok().label: result.ok() for result in schema.get_all_operations()}
        runs = [(operations[label], plan) for label, plan in plans.items() if label in operations]
        for round_ in range(50):
            if self.budget <= 0:
                return
            share = max(1, min(8, self.budget // len(runs)))
            for i, (operation, plan) in enumerate(runs):
                if self.budget <= 0:
                    return
                strategy = plan.flatmap(_cases_of(operation, lambda kwargs: kwargs))
                self._run(strategy, min(share, self.budget), seed + 1000 * round_ + i)

    def stateful(self, schema: Any, seed: int, cases: int, steps: int = 8) -> None:
        """schemathesis' state machine: scenarios of up to ``steps`` linked calls."""
        self.phase, self.budget = "stateful", cases
        runner = self
        base = schema.as_state_machine()

        class Machine(base):  # type: ignore[misc, valid-type]
            def get_call_kwargs(self, case: Case[Any]) -> dict[str, Any]:
                return {}

            def call(self, case: Case[Any], **kwargs: Any) -> Any:
                response = runner.send(case)
                if response is None:
                    raise RuntimeError("the application raised; recorded")
                return response

            def validate_response(self, response: Any, case: Case[Any], *args: Any, **kwargs: Any) -> None:
                return None  # checked in runner.send

        for round_ in range(20):
            if self.budget <= 0:
                return
            examples = max(1, self.budget // steps)
            settings = _settings(examples, stateful_step_count=steps)
            # A raising application is already recorded; the machine stops at it.
            with _forced_seed(seed + round_), contextlib.suppress(Exception):
                run_state_machine_as_test(Machine, settings=settings)

    def _run(
        self, strategy: st.SearchStrategy[Case[Any]], examples: int, seed: int, *, hostile: bool = False
    ) -> None:
        @_settings(examples)
        @hypothesis.given(strategy)
        def test(case: Case[Any]) -> None:
            self.send(case, hostile=hostile)

        # An operation without inputs has no invalid ones: nothing to send.
        with _forced_seed(seed), contextlib.suppress(hypothesis.errors.Unsatisfiable):
            test()


@contextlib.contextmanager
def _forced_seed(seed: int) -> Iterator[None]:
    """Hypothesis draws from this seed (what ``pytest --hypothesis-seed`` sets), so a run is
    repeatable; ``hypothesis.seed`` cannot reach the state machine's own test function."""
    import hypothesis.core

    core: Any = hypothesis.core
    before = core.global_force_seed
    core.global_force_seed = seed
    try:
        yield
    finally:
        core.global_force_seed = before


def _cases_of(
    operation: Any, arguments: Callable[[Any], dict[str, Any]]
) -> Callable[[Any], st.SearchStrategy[Case[Any]]]:
    """For ``flatmap``: the operation's cases with what was drawn fixed (a raw JSON body, or
    the body, path or query from ``tests/fuzz/realistic.py``)."""

    def cases(drawn: Any) -> st.SearchStrategy[Case[Any]]:
        kwargs = arguments(drawn)
        if "body" in kwargs:
            kwargs.setdefault("media_type", "application/json")
        strategy: st.SearchStrategy[Case[Any]] = operation.as_strategy(**kwargs)
        return strategy

    return cases


def _device_ids(srv: Server) -> list[str]:
    client = TestClient(srv.app)
    answer = client.get("/v1/devices", headers=srv.ids[Role.ADMIN].headers())
    return [device["id"] for device in answer.json()] if answer.is_success else []


def _realistic_plans(device_ids: list[str]) -> dict[str, st.SearchStrategy[dict[str, Any]]]:
    """Per operation, the arguments of ``APIOperation.as_strategy`` (the rest is generated)."""
    json_body = "application/json"

    def body(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
        return strategy.map(lambda b: {"body": b, "media_type": json_body})

    def path(**names: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries(names).map(lambda p: {"path_parameters": p})

    hosts = st.sampled_from(realistic.HOSTS)
    consumers = st.sampled_from(realistic.CONSUMERS)
    types = st.sampled_from(realistic.TYPES)
    ids = st.sampled_from([*device_ids, "nope"])
    return {
        "POST /v1/claims": body(realistic.claim_bodies()),
        "POST /v1/explain": body(realistic.claim_bodies()),
        "POST /v1/capacity": body(realistic.claim_bodies()),
        "GET /v1/capacity": realistic.capacity_queries().map(lambda q: {"query": q}),
        "PUT /v1/hosts/{host}/inventory": st.tuples(hosts, realistic.inventory_reports()).map(
            lambda t: {"path_parameters": {"host": t[0]}, "body": t[1], "media_type": json_body}
        ),
        "POST /v1/hosts/{host}/heartbeat": path(host=hosts),
        "GET /v1/hosts/{host}/work": path(host=hosts),
        "POST /v1/hosts/{host}/work": st.tuples(hosts, realistic.work_results(device_ids)).map(
            lambda t: {"path_parameters": {"host": t[0]}, "body": t[1], "media_type": json_body}
        ),
        "POST /v1/resource-types": body(realistic.type_bodies()),
        "PATCH /v1/resource-types/{name}": realistic.type_bodies().map(
            lambda b: {"path_parameters": {"name": b.pop("name")}, "body": b, "media_type": json_body}
        ),
        "DELETE /v1/resource-types/{name}": path(name=types),
        "PUT /v1/quotas/{project}/{type_name}": st.tuples(
            st.sampled_from(["demo", "other"]), types, st.sampled_from([0, 1, 2, None, 2**31])
        ).map(
            lambda t: {
                "path_parameters": {"project": t[0], "type_name": t[1]},
                "body": {"limit": t[2]},
                "media_type": json_body,
            }
        ),
        "GET /v1/allocations/{consumer}": path(consumer=consumers),
        "GET /v1/allocations/{consumer}/libvirt": path(consumer=consumers),
        "DELETE /v1/allocations/{consumer}": path(consumer=consumers),
        "GET /v1/devices/{device_id}": path(device_id=ids),
        "POST /v1/devices/{device_id}/clear": path(device_id=ids),
        "POST /v1/hosts/{host}/rename": st.tuples(hosts, hosts).map(
            lambda t: {"path_parameters": {"host": t[0]}, "body": {"new_name": t[1]}, "media_type": json_body}
        ),
        "DELETE /v1/hosts/{host}": path(host=hosts),
        "GET /v1/hosts/{host}": path(host=hosts),
    }


def _can_be_invalid(operation: Any) -> bool:
    """Whether schemathesis can make invalid data for the operation: not when its only inputs
    are text in the path (any text is a valid path segment), where it tries for long in vain."""
    if len(operation.query) or len(operation.body):
        return True
    return any(
        param.definition.get("schema", {}).get("type") != "string" for param in operation.path_parameters
    )


def _settings(examples: int, **extra: Any) -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=False,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
        report_multiple_bugs=False,
        **extra,
    )


# Streams that never end (server-sent events) would hold a case forever.
STREAMING = r"^/v1/events/stream"


# Links schemathesis does not infer from the document, added to the harness' copy of it (the
# API declares none): operation -> status -> link name -> (target operationId, parameters).
LINKS: dict[tuple[str, str], dict[str, dict[str, tuple[str, dict[str, str]]]]] = {
    ("/v1/tokens", "post"): {
        "201": {
            "RevokeToken": ("revoke_token_v1_tokens__token_id__delete", {"token_id": "$response.body#/id"}),
            "LoginLink": (
                "create_login_link_v1_tokens__token_id__login_link_post",
                {"token_id": "$response.body#/id"},
            ),
        }
    },
    ("/v1/hosts/{host}/inventory", "put"): {
        "200": {
            "GetHost": ("get_host_v1_hosts__host__get", {"host": "$request.path.host"}),
            "GetWork": ("get_work_v1_hosts__host__work_get", {"host": "$request.path.host"}),
            "Heartbeat": ("heartbeat_v1_hosts__host__heartbeat_post", {"host": "$request.path.host"}),
            "RenameHost": ("rename_host_v1_hosts__host__rename_post", {"host": "$request.path.host"}),
            "DeleteHost": ("delete_host_v1_hosts__host__delete", {"host": "$request.path.host"}),
        }
    },
    ("/v1/hosts/{host}/rename", "post"): {
        "200": {"GetRenamed": ("get_host_v1_hosts__host__get", {"host": "$response.body#/name"})},
    },
}


def load_schema(app: FastAPI) -> Any:
    """The OpenAPI document the application serves, with :data:`LINKS` added and without its
    never-ending streams."""
    document = TestClient(app).get("/openapi.json").json()
    operation_ids = {op.get("operationId") for ops in document["paths"].values() for op in ops.values()}
    for (path, method), statuses in LINKS.items():
        responses = document["paths"][path][method]["responses"]
        for status, links in statuses.items():
            for name, (target, parameters) in links.items():
                if target not in operation_ids:  # the API changed: drop the link, not the run
                    continue
                responses[status].setdefault("links", {})[name] = {
                    "operationId": target,
                    "parameters": parameters,
                }
    schema = schemathesis.openapi.from_dict(document)
    schema.app = app
    schema.location = "/openapi.json"
    return schema.exclude(path_regex=STREAMING)


def run(
    *,
    cases: int = 10_000,
    db: str = "sqlite",
    seed: int = 20260101,
    roles: tuple[Role, ...] = ROLES,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Fuzz the API with ``cases`` cases in all, split between the identities: per identity
    15 % hostile bodies, 25 % stateful, 25 % nearly right bodies, the rest (35 %) stateless."""
    report = Report(db=db, seed=seed, target=cases)
    start = time.monotonic()
    try:
        for n, role in enumerate(roles):
            per_role = max(1, cases // len(roles) + (n < cases % len(roles)))
            with server(db) as srv:
                schema = load_schema(srv.app)
                runner = Runner(srv, role, report, per_role)
                role_seed = seed + 100_000 * n
                runner.hostile(schema, role_seed, max(1, per_role * 15 // 100))
                runner.stateful(schema, role_seed, max(1, per_role * 25 // 100))
                runner.realistic(schema, role_seed, max(1, per_role * 25 // 100))
                # The hostile examples come on top: the stateless phase keeps its 35 %.
                sent = sum(report.cases.get(role.value, {}).values())
                runner.stateless(schema, role_seed, max(per_role * 35 // 100, per_role - sent))
                if progress:
                    progress(f"{role.value}: {sum(report.cases[role.value].values())} cases")
                asgi.shutdown_lifespans()
    finally:
        report.seconds = time.monotonic() - start
    return report
