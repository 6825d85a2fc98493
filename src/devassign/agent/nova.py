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
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if text.lstrip().startswith(("{", "[")) and path.suffix != ".conf":
        try:
            data = json.loads(text)
        except RecursionError as exc:
            raise ConfigError(f"{path}: not valid JSON: nested too deep") from exc
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
        except (ValueError, RecursionError) as exc:
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


_HEX = re.compile(r"[0-9a-fA-F]+")


def _nova_glob(addr: str) -> str | None:
    """A glob address as Nova reads it (``PciAddressGlobSpec``): fields left out or empty are
    ``*`` (``:0a:00.`` is ``*:0a:00.*``), others hex numbers padded to their width; None when
    Nova would refuse it."""
    dbs, _, func = addr.strip().partition(".")
    fields = dbs.split(":") if dbs else []
    if len(fields) > 3:
        return None
    fields = ["*"] * (3 - len(fields)) + fields + [func]
    out = []
    for raw, (width, top) in zip(fields, ((4, 0xFFFF), (2, 0xFF), (2, 0x1F), (1, 0x7)), strict=True):
        text = raw.strip() or "*"
        if text == "*":
            out.append(text)
            continue
        if not _HEX.fullmatch(text) or int(text, 16) > top:
            return None
        out.append(f"{int(text, 16):0{width}x}")
    return f"{out[0]}:{out[1]}:{out[2]}.{out[3]}"


def _address_glob(addr: Any, notes: list[str]) -> str | None:
    if isinstance(addr, str):
        glob = _nova_glob(addr)
        if glob is None:
            notes.append(f"address {addr!r} is not a PCI address Nova accepts: not converted, review it")
        return glob
    if isinstance(addr, dict):
        parts = {k: str(addr.get(k, "*")) for k in ("domain", "bus", "slot", "function")}
        if any(re.search(r"[\\^$()\[\]+?|{}]", p) for p in parts.values()):
            notes.append(f"address {addr} uses a regular expression: not converted, review it")
            return None
        return f"{parts['domain']}:{parts['bus']}:{parts['slot']}.{parts['function']}".lower()
    return None


_SINGLE_ADDRESS = re.compile(r"([0-9a-fA-F]{1,4}):([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])")


def single_address(addr: Any) -> str | None:
    """The one PCI function a spec's ``address`` names (``dddd:bb:ss.f``), or None for a glob,
    a partial address or a regular expression.

    Nova matches a VF by its PF's address only for such a spec (``WhitelistPciAddress``: a
    single address that is a PF on the host); a glob is matched against each function's own
    address, VFs included.
    """
    if isinstance(addr, str):
        m = _SINGLE_ADDRESS.fullmatch(addr.strip())
        if m is None:
            return None
        fields = list(m.groups())
    elif isinstance(addr, dict):
        # Nova matches each field as a regular expression from its start: only full-width hex
        # fields name exactly one function
        fields = [str(addr.get(k, "")).strip() for k in ("domain", "bus", "slot", "function")]
        if [len(f) for f in fields] != [4, 2, 2, 1] or not all(_HEX.fullmatch(f) for f in fields):
            return None
    else:
        return None
    domain, bus, slot, function = (int(f, 16) for f in fields)
    if domain > 0xFFFF or bus > 0xFF or slot > 0x1F or function > 0x7:
        return None
    return f"{domain:04x}:{bus:02x}:{slot:02x}.{function:x}"


def _ids_fit(alias: dict[str, Any], match: dict[str, str]) -> bool:
    """Whether the alias's vendor/product ids do not contradict the ones ``match`` names."""
    for key in ("vendor_id", "product_id"):
        have = str(alias.get(key, "")).lower()
        if have and key in match and have != match[key]:
            return False
    return True


def _vf_rules(
    spec: dict[str, Any], pf: str, aliases: list[dict[str, Any]], attrs: dict[str, Any], notes: list[str]
) -> list[dict[str, Any]]:
    """Rules for the VFs of the PF at ``pf``, which Nova's spec takes when ``pf`` is a PF.

    Each alias that may name a VF (``type-VF`` or no device type) and whose ids fit the spec's
    gives one rule with its ids; none: one rule for any VF of the PF.
    """
    match: dict[str, str] = {"parent": pf}
    for key in ("vendor_id", "product_id"):
        if key in spec and spec[key] != "*":
            match[key] = str(spec[key]).lower()
    named: list[tuple[str, dict[str, str]]] = []
    if isinstance(spec.get("resource_class"), str):
        named = [(_type_name(spec["resource_class"]), dict(match))]
    else:
        for alias in aliases:
            if (
                "name" not in alias
                or alias.get("resource_class")
                or alias.get("device_type", "type-VF") != "type-VF"
            ):
                continue
            if not _ids_fit(alias, match):
                continue
            m = dict(match)
            for key in ("vendor_id", "product_id"):
                if alias.get(key) not in (None, "", "*"):
                    m[key] = str(alias[key]).lower()
            named.append((_type_name(str(alias["name"])), m))
    if not named:
        if "vendor_id" in match and "product_id" in match:
            name = f"PCI_{match['vendor_id']}_{match['product_id']}".upper()
        else:
            name = _type_name("PCI_VF_" + pf).upper()
            notes.append(
                f"address {pf}: no alias names its VFs, so rule {name} takes any VF of it; "
                "rename the type, or add its vendor_id/product_id"
            )
        named = [(name, dict(match))]
    rules = []
    for name, m in named:
        rule: dict[str, Any] = {"type": name, "match": {**m, "kind": "sriov_vf"}}
        if attrs:
            rule["attributes"] = attrs
        rules.append(rule)
    types = ", ".join(dict.fromkeys(r["type"] for r in rules))
    notes.append(
        f"address {pf}: if it is an SR-IOV PF, Nova takes its VFs (rule {types}) and the PF "
        "itself while none of its VFs is in use; devassign never offers a PF whose VFs are "
        "enabled, so the PF's own rule takes it only while its VFs are disabled"
    )
    return rules


def convert(specs: list[dict[str, Any]], aliases: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """TOML text with one ``[[device]]`` per (spec, alias) pair, and notes for what did not fit.

    A spec that names one function by its address also gets rules for that function's VFs
    (matched by ``parent``), as Nova matches the VFs of a PF named so.
    """
    notes: list[str] = []
    rules: list[dict[str, Any]] = []
    for spec in specs:
        match: dict[str, str] = {}
        for key in ("vendor_id", "product_id"):
            if key in spec and spec[key] != "*":
                match[key] = str(spec[key]).lower()
        pf: str | None = None
        if "address" in spec:
            pf = single_address(spec["address"])
            glob = pf or _address_glob(spec["address"], notes)
            if glob and glob != "*:*:*.*":
                match["address"] = glob
                if pf is None:
                    notes.append(
                        f"address {spec['address']!r} is a glob: Nova takes the VFs of a PF by the "
                        "PF's address only when a spec names one function, so the rule takes the "
                        "functions whose own address fits it (VFs included), as Nova does; to take "
                        f"the VFs of the PFs it names, add a rule with match.parent = {glob!r}"
                    )
        if "devname" in spec:
            notes.append(
                f"devname {spec['devname']!r} has no devassign match key; use address (and, "
                "for the VFs of a PF, a rule with match.parent = the PF's address)"
            )
        if not match:
            notes.append(f"spec {spec} matches every device: skipped")
            continue
        attrs = {k: spec[k] for k in _ATTRIBUTE_KEYS if k in spec}
        names: list[tuple[str, str | None]]
        if isinstance(spec.get("resource_class"), str):
            names = [(_type_name(spec["resource_class"]), None)]
        else:
            # An alias naming a resource_class (PCI in Placement) names the specs of that class
            # only, never this one (which has none), whatever ids it leaves out.
            names = [
                (_type_name(str(a["name"])), _DEVICE_TYPES.get(str(a.get("device_type", ""))))
                for a in aliases
                if "name" in a
                and not a.get("resource_class")
                and str(a.get("vendor_id", "")).lower() in ("", match.get("vendor_id", ""))
                and str(a.get("product_id", "")).lower() in ("", match.get("product_id", ""))
            ]
        if not names:
            vendor, product = match.get("vendor_id", "ANY"), match.get("product_id", "ANY")
            names = [(f"PCI_{vendor}_{product}".upper(), None)]
            if "ANY" in (vendor, product):
                notes.append(f"spec {spec}: no ids, and no alias names it: type {names[0][0]}, rename it")
        for name, kind in names:
            rule: dict[str, Any] = {"type": name, "match": dict(match)}
            if kind:
                rule["match"]["kind"] = kind
            else:
                rule["match_vfs"] = True  # a Nova spec without a device type takes VFs too
            if attrs:
                rule["attributes"] = attrs
            rules.append(rule)
        if pf is not None:
            rules.extend(_vf_rules(spec, pf, aliases, attrs, notes))
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
