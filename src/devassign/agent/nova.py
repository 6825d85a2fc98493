"""Translate Nova's PCI passthrough configuration into devassign ``[[device]]`` rules.

Nova splits the job in two: ``[pci] device_spec`` (formerly ``passthrough_whitelist``)
says which devices may be passed through, ``[pci] alias`` names them for flavors. Here
one rule says both, so each spec is joined with the aliases that select it; a spec no
alias names gets Nova's own default resource class, ``PCI_<VENDOR>_<PRODUCT>``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import tomli_w

from devassign.agent.config import ConfigError, parse_config

SPEC_KEYS = ("device_spec", "passthrough_whitelist", "pci_passthrough_whitelist")
ALIAS_KEYS = ("alias", "pci_alias")
_DEVICE_TYPES = {"type-PCI": "pci", "type-PF": "sriov_pf", "type-VF": "sriov_vf"}
_ATTRIBUTE_KEYS = ("physical_network", "trusted", "remote_managed")


def read_nova(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The device specs and aliases of a nova.conf (INI) or of a JSON file."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith(("{", "[")) and path.suffix != ".conf":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
        if isinstance(data, list):
            return _objects(data, path), []
        if isinstance(data, dict):
            return (
                [o for k in SPEC_KEYS for o in _objects(data.get(k, []), path)],
                [o for k in ALIAS_KEYS for o in _objects(data.get(k, []), path)],
            )
        raise ConfigError(f"{path}: expected a JSON list or object")
    specs: list[dict[str, Any]] = []
    aliases: list[dict[str, Any]] = []
    for section, key, value in _ini_values(text):
        if section.lower() not in ("pci", "default") or key not in SPEC_KEYS + ALIAS_KEYS:
            continue
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise ConfigError(f"{path}: [{section}] {key} is not JSON: {exc}") from exc
        if key in SPEC_KEYS:
            specs.extend(_objects(parsed, path))
        elif key in ALIAS_KEYS:
            aliases.extend(_objects(parsed, path))
    return specs, aliases


def _ini_values(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, keeping repeats (Nova's options are multi-valued)."""
    out: list[tuple[str, str, str]] = []
    section = "DEFAULT"
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        if line[0].isspace() and out:  # continuation of the previous value
            s, k, v = out[-1]
            out[-1] = (s, k, v + " " + line.strip())
            continue
        m = re.match(r"^\[([^\]]+)\]\s*$", line)
        if m:
            section = m.group(1).strip()
            continue
        key, sep, value = line.partition("=")
        if sep:
            out.append((section, key.strip(), value.strip()))
    return out


def _objects(value: Any, path: Path) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(i, dict) for i in items):
        raise ConfigError(f"{path}: expected JSON objects, got {value!r}")
    return items


def _type_name(raw: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", raw.removeprefix("CUSTOM_"))
    return name[:64] or "PCI_DEVICE"


def _address_glob(addr: Any, notes: list[str]) -> str | None:
    if isinstance(addr, str):
        return addr.lower()
    if isinstance(addr, dict):
        parts = {k: str(addr.get(k, "*")) for k in ("domain", "bus", "slot", "function")}
        if any(re.search(r"[\\^$()\[\]+?|{}]", p) for p in parts.values()):
            notes.append(f"address {addr} uses a regular expression: not converted, review it")
            return None
        return f"{parts['domain']}:{parts['bus']}:{parts['slot']}.{parts['function']}".lower()
    return None


def convert(specs: list[dict[str, Any]], aliases: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """TOML text with one ``[[device]]`` per (spec, alias) pair, and notes for what did not fit."""
    notes: list[str] = []
    rules: list[dict[str, Any]] = []
    for spec in specs:
        match: dict[str, str] = {}
        for key in ("vendor_id", "product_id"):
            if key in spec and spec[key] != "*":
                match[key] = str(spec[key]).lower()
        if "address" in spec:
            glob = _address_glob(spec["address"], notes)
            if glob and glob != "*:*:*.*":
                match["address"] = glob
        if "devname" in spec:
            notes.append(f"devname {spec['devname']!r} has no devassign match key; use address")
        if not match:
            notes.append(f"spec {spec} matches every device: skipped")
            continue
        attrs = {k: spec[k] for k in _ATTRIBUTE_KEYS if k in spec}
        names: list[tuple[str, str | None]]
        if isinstance(spec.get("resource_class"), str):
            names = [(_type_name(spec["resource_class"]), None)]
        else:
            names = [
                (_type_name(str(a["name"])), _DEVICE_TYPES.get(str(a.get("device_type", ""))))
                for a in aliases
                if "name" in a
                and str(a.get("vendor_id", "")).lower() in ("", match.get("vendor_id", ""))
                and str(a.get("product_id", "")).lower() in ("", match.get("product_id", ""))
            ]
        if not names:
            vendor, product = match.get("vendor_id", "ANY"), match.get("product_id", "ANY")
            names = [(f"PCI_{vendor}_{product}".upper(), None)]
        for name, kind in names:
            rule: dict[str, Any] = {"type": name, "match": dict(match)}
            if kind:
                rule["match"]["kind"] = kind
            else:
                rule["match_vfs"] = True  # a Nova spec without a device type takes VFs too
            if attrs:
                rule["attributes"] = attrs
            rules.append(rule)
    text = tomli_w.dumps({"device": rules}) if rules else ""
    parse_config({"device": rules}, source="converted Nova configuration")  # stays loadable
    return text, notes


def import_nova(path: Path) -> str:
    """The whole answer of ``agent import-nova``: notes as TOML comments, then the rules."""
    try:
        specs, aliases = read_nova(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if not specs:
        raise ConfigError(f"{path}: no [pci] device_spec or passthrough_whitelist found")
    text, notes = convert(specs, aliases)
    header = [f"# converted from {path} by devassign agent import-nova"]
    header += [f"# NOTE: {n}" for n in notes]
    return "\n".join(header) + "\n\n" + text
