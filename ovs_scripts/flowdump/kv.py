"""Generic key-value helpers over the ``ovs.flow`` parsers (no OpenFlow vocabulary here).

``ovs-ofctl`` prints ``k=v,k:v,k(v),flag`` texts; :func:`lenient_kv` reads
any of them with values left as text, :func:`num` turns the numeric ones into
numbers, :func:`parse_actions` decodes an action list with OFPFlow's action
decoders, and :func:`references` finds the groups and meters an action list uses.
"""

from __future__ import annotations

from typing import Any

from ovs.flow.kv import KVDecoders, KVParser
from ovs.flow.ofp import OFPFlow


def lenient_kv(text: str) -> list:
    """ovs.flow KeyValues of an ovs-ofctl ``k=v,k:v,k(v),flag`` text, values left as text."""
    parser = KVParser(text, KVDecoders(default=lambda k, v: (k, v)))
    parser.parse()
    return parser.kv()


def lenient_pairs(text: str) -> list[tuple[str, Any]]:
    """(key, value-string or True) pairs of an ovs-ofctl ``k=v,k:v,flag`` text, in order."""
    return [(kv.key, kv.value) for kv in lenient_kv(text)]


def kv_text(kv) -> str:
    """One key-value as it was written (``fields(ip_src)``, ``ip``, ``nw_dst=10.0.0.1``)."""
    meta = kv.meta
    if meta is None:
        return kv.key
    if meta.vpos == -1:  # a bare keyword such as ``ip``
        return meta.kstring
    return f"{meta.kstring}{meta.delim}{meta.vstring}{meta.end_delim}"


def num(value: Any) -> Any:
    """int/float for numeric strings (``12``, ``0x1f``, ``0.5s``), else unchanged."""
    if not isinstance(value, str):
        return value
    s = value[:-1] if value.endswith("s") and value[:-1].replace(".", "", 1).isdigit() else value
    try:
        return int(s, 0)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return value


def parse_actions(text: str) -> list[dict]:
    """Actions text -> OFPFlow's list of one-key dicts (``[{'output': {'port': 2}}]``)."""
    if not text:
        return []
    parser = KVParser(text, OFPFlow.action_decoders())
    parser.parse()
    return [{kv.key: kv.value} for kv in parser.kv()]


def jsonable(value: Any) -> Any:
    """Plain JSON data from ovs.flow values (masks and addresses become their text)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def references(actions: Any) -> set[tuple[str, int]]:
    """``("group", 5)`` / ``("meter", 1)`` for every group or meter an action list uses, nested ones too."""
    refs: set[tuple[str, int]] = set()
    if isinstance(actions, dict):
        for key, val in actions.items():
            if key in ("group", "meter"):
                ident = num(val)
                if isinstance(ident, int):
                    refs.add((key, ident))
            else:
                refs |= references(val)
    elif isinstance(actions, (list, tuple)):
        for item in actions:
            refs |= references(item)
    return refs
