"""Groups of ``ovs-ofctl dump-groups`` (with ``dump-group-stats`` counters): :class:`GroupEntry`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ovs_scripts.flowdump import kv
from ovs_scripts.flowdump.ofctl import body_lines


@dataclass
class Bucket:
    index: int
    bucket_id: int | None
    props: dict[str, Any]
    actions: list[dict]
    actions_text: str
    n_packets: int | None = None
    n_bytes: int | None = None

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "bucket_id": self.bucket_id,
            "props": kv.jsonable(self.props),
            "actions": kv.jsonable(self.actions),
            "actions_text": self.actions_text,
            "n_packets": self.n_packets,
            "n_bytes": self.n_bytes,
        }


@dataclass
class GroupEntry:
    group_id: int
    type: str
    props: dict[str, Any]
    buckets: list[Bucket]
    raw: str
    props_text: str = ""  # e.g. ``selection_method=hash,fields(ip_src,ip_dst)``
    n_packets: int | None = None
    n_bytes: int | None = None
    ref_count: int | None = None
    duration: float | None = None

    def references(self) -> set[tuple[str, int]]:
        return kv.references([b.actions for b in self.buckets])

    def to_json(self) -> dict:
        return {
            "group_id": self.group_id,
            "type": self.type,
            "props": kv.jsonable(self.props),
            "props_text": self.props_text,
            "buckets": [b.to_json() for b in self.buckets],
            "n_packets": self.n_packets,
            "n_bytes": self.n_bytes,
            "ref_count": self.ref_count,
            "duration": self.duration,
            "raw": self.raw,
        }


def parse_group(line: str) -> GroupEntry:
    """One ``dump-groups`` line: ``group_id=5,type=select,bucket=watch_port:2,actions=output:2,...``.

    Buckets are cut at the literal ``,bucket=`` (no action prints that text);
    a bucket's properties come before ``actions=`` and its actions are decoded
    with OFPFlow's action decoders.
    """
    raw = line.strip()
    chunks = raw.split(",bucket=")
    header = chunks[0]
    if header.startswith("bucket="):  # no group_id/type (not printed by OVS, but be tolerant)
        chunks, header = ["", header[len("bucket="):], *chunks[1:]], ""
    elif ",bucket=" not in raw and "bucket=" in header:
        header, _, first = header.partition("bucket=")
        chunks = [header.rstrip(","), first]
    pairs = kv.lenient_kv(header)
    props = {p.key: kv.num(p.value) for p in pairs if p.key not in ("group_id", "type")}
    props_text = ",".join(kv.kv_text(p) for p in pairs if p.key not in ("group_id", "type"))
    values = {p.key: p.value for p in pairs}
    buckets = []
    for index, chunk in enumerate(chunks[1:]):
        bucket_text, _, actions_text = chunk.partition("actions=")
        bprops = {k: kv.num(v) for k, v in kv.lenient_pairs(bucket_text.rstrip(","))} if bucket_text else {}
        bucket_id = bprops.pop("bucket_id", None)
        try:
            actions = kv.parse_actions(actions_text)
        except Exception:
            actions = []
        buckets.append(Bucket(index, bucket_id, bprops, actions, actions_text))
    return GroupEntry(
        group_id=int(kv.num(values.get("group_id", -1))),
        type=str(values.get("type", "")),
        props=props,
        buckets=buckets,
        raw=raw,
        props_text=props_text,
    )


def parse_groups(desc_text: str, stats_text: str = "") -> list[GroupEntry]:
    """Groups of ``dump-groups`` output, with counters of ``dump-group-stats`` output if given."""
    groups = [parse_group(line) for line in body_lines(desc_text)]
    by_id = {g.group_id: g for g in groups}
    for line in body_lines(stats_text):
        pairs = kv.lenient_pairs(line.strip())
        values = dict(pairs)
        group = by_id.get(kv.num(values.get("group_id")))
        if group is None:
            continue
        bucket = None
        for key, val in pairs:
            if key.startswith("bucket") and key[6:].isdigit():
                index = int(key[6:])
                bucket = group.buckets[index] if index < len(group.buckets) else None
                # ``bucket0:packet_count=3``: the first counter is the value
                key, _, val = str(val).partition("=")
            target_is_bucket = bucket is not None
            if key == "packet_count":
                if target_is_bucket:
                    bucket.n_packets = kv.num(val)
                else:
                    group.n_packets = kv.num(val)
            elif key == "byte_count":
                if target_is_bucket:
                    bucket.n_bytes = kv.num(val)
                else:
                    group.n_bytes = kv.num(val)
            elif key == "ref_count" and not target_is_bucket:
                group.ref_count = kv.num(val)
            elif key == "duration" and not target_is_bucket:
                group.duration = kv.num(val)
    return sorted(groups, key=lambda g: g.group_id)
