"""Named pass/fail checks, written to a JSON file as they happen (a crash keeps what was done).

Three outcomes: ``pass``, ``fail`` and ``known``. ``known`` is a difference from the real
kernel that is listed with its reason in :data:`tests.vm.parity.KNOWN` (a simulation gap or a
devassign bug whose fix belongs to another file): it is shown in every summary but does not
fail the run. A known difference that is gone passes, with a note to drop it from the list.
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MARK = "DEVASSIGN-CHECK"


@dataclass
class Check:
    name: str
    status: str  # pass | fail | known
    detail: str = ""
    section: str = ""


@dataclass
class Checks:
    out: Path | None = None
    echo: Callable[[str], None] = print
    items: list[Check] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    section: str = ""
    started: float = field(default_factory=time.monotonic)
    open_parts: list[str] = field(default_factory=list)

    def _add(self, check: Check) -> bool:
        self.items.append(check)
        self.echo(
            f"{MARK} {check.status.upper():5} {check.section}: {check.name}"
            + (f" -- {check.detail}" if check.detail else "")
        )
        self.save()
        return check.status != "fail"

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        return self._add(Check(name, "pass" if ok else "fail", detail, self.section))

    def equal(self, name: str, got: Any, want: Any, detail: str = "") -> bool:
        ok = got == want
        text = detail or (f"{got!r}" if ok else f"got {got!r}, expected {want!r}")
        return self.check(name, ok, text)

    def known(self, name: str, ok: bool, why: str, detail: str = "") -> bool:
        """A listed difference: ``known`` while it lasts, ``pass`` (with a note) once gone."""
        if ok:
            return self._add(
                Check(name, "pass", f"no longer differs ({detail}): drop it from KNOWN", self.section)
            )
        return self._add(Check(name, "known", f"{detail}; {why}", self.section))

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        """A section; an exception in it is a failed check (with its traceback), not the end."""
        self.open_parts.append(name)
        self.section = name
        t0 = time.monotonic()
        self.echo(f"{MARK} ----- {name}")
        try:
            yield
        except Exception as exc:
            tail = traceback.format_exc().strip().splitlines()[-12:]
            self.check("section ran to its end", False, f"{type(exc).__name__}: {exc}\n" + "\n".join(tail))
        finally:
            self.meta.setdefault("sections", {})[name] = round(time.monotonic() - t0, 1)
            self.open_parts.pop()
            if self.open_parts:  # back in the section this one was opened in
                self.section = self.open_parts[-1]
                self.echo(f"{MARK} ----- {self.section}")

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.items if c.status == "fail"]

    def save(self) -> None:
        if self.out is None:
            return
        doc = {
            "meta": {**self.meta, "seconds": round(time.monotonic() - self.started, 1)},
            "checks": [asdict(c) for c in self.items],
        }
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(self.out)
