"""Meters of ``ovs-ofctl dump-meters`` (with ``meter-stats`` counters) and their canonical text.

OVS has no offline meter parser, so the desired and the dumped meter are both
reduced to one spelling by :func:`canonical_meter` before they are compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ovs_scripts.flowdump import kv
from ovs_scripts.flowdump.ofctl import body_lines

#: Canonical order of meter flags and band keys (others follow, sorted).
_METER_FLAGS = ("kbps", "pktps", "burst", "stats")
_BAND_KEYS = ("type", "rate", "burst_size", "prec_level")


@dataclass
class MeterEntry:
    meter_id: int
    flags: list[str]
    bands: list[dict[str, Any]]
    raw: str  # canonical add-meter form, see canonical_meter
    flow_count: int | None = None
    n_packets: int | None = None
    n_bytes: int | None = None
    duration: float | None = None

    def to_json(self) -> dict:
        return {
            "meter_id": self.meter_id,
            "flags": list(self.flags),
            "bands": kv.jsonable(self.bands),
            "flow_count": self.flow_count,
            "n_packets": self.n_packets,
            "n_bytes": self.n_bytes,
            "duration": self.duration,
            "raw": self.raw,
        }


def meter_parts(text: str) -> tuple[int | None, list[str], list[dict[str, Any]]]:
    """Meter id, flags and bands of an add-meter text or a joined dump-meters block.

    Both ``meter=1,pktps,burst,bands=type=drop,rate=100,burst_size=25`` and
    ``meter=1 pktps burst bands= type=drop rate=100 burst_size=25`` give
    ``(1, ['pktps', 'burst'], [{'type': 'drop', 'rate': 100, 'burst_size': 25}])``;
    in the band list every ``type=`` starts a new band.
    """
    meter_id = None
    flags: list[str] = []
    bands: list[dict[str, Any]] = []
    in_bands = False
    # The kv parser splits on commas only: ``pktps burst`` would be one word.
    for key, val in kv.lenient_pairs(",".join(text.split())):
        if not in_bands:
            if key == "meter":
                meter_id = kv.num(val)
            elif key == "bands":
                in_bands = True
                if isinstance(val, str) and "=" in val:  # ``bands=type=drop``
                    k, _, v = val.partition("=")
                    bands.append({k: kv.num(v)})
            elif val is True:
                flags.append(key)
            continue
        if key == "type" or not bands:
            bands.append({})
        bands[-1][key] = kv.num(val)
    return meter_id, flags, bands


def canonical_meter(text: str) -> str:
    """A meter in one fixed add-meter spelling, so the desired and the dumped form compare equal.

    Flags in the order kbps, pktps, burst, stats; band keys in the order type,
    rate, burst_size, prec_level; bands sorted.  OVS keeps a meter exactly as
    configured (no defaults are filled in: it rejects a meter without kbps or
    pktps and a burst_size without the burst flag), so this is all the
    normalisation meters need.
    """
    meter_id, flags, bands = meter_parts(text)
    order = {f: i for i, f in enumerate(_METER_FLAGS)}
    flag_text = sorted(set(flags), key=lambda f: (order.get(f, len(order)), f))
    korder = {k: i for i, k in enumerate(_BAND_KEYS)}
    band_texts = sorted(
        ",".join(f"{k}={v}" for k, v in sorted(b.items(), key=lambda item: (korder.get(item[0], len(korder)), item[0])))
        for b in bands
    )
    return ",".join([f"meter={meter_id}", *flag_text, "bands=" + ",".join(band_texts)])


def _meter_blocks(text: str, start: str) -> list[str]:
    """dump-meters / meter-stats output -> one joined text per meter (blocks span lines)."""
    blocks: list[str] = []
    for line in body_lines(text):
        s = line.strip()
        if s.startswith(start):
            blocks.append(s)
        elif blocks:
            blocks[-1] += " " + s
    return blocks


def parse_meters(config_text: str, stats_text: str = "") -> list[MeterEntry]:
    """Meters of ``dump-meters`` output, with counters of ``meter-stats`` output if given."""
    meters = []
    for block in _meter_blocks(config_text, "meter="):
        meter_id, flags, bands = meter_parts(block)
        if meter_id is None:
            continue
        meters.append(MeterEntry(meter_id, flags, bands, canonical_meter(block)))
    by_id = {m.meter_id: m for m in meters}
    for block in _meter_blocks(stats_text, "meter:"):
        meter = None
        band = None
        in_bands = False
        for key, val in kv.lenient_pairs(",".join(block.split())):
            val = kv.num(val)
            if key == "meter":
                meter = by_id.get(val)
            elif meter is None:
                break
            elif key == "bands":
                in_bands = True
            elif in_bands and key.isdigit():
                index = int(key)
                band = meter.bands[index] if index < len(meter.bands) else None
            elif in_bands and band is not None and key in ("packet_count", "byte_count"):
                band["n_packets" if key == "packet_count" else "n_bytes"] = val
            elif key == "flow_count":
                meter.flow_count = val
            elif key == "packet_in_count":
                meter.n_packets = val
            elif key == "byte_in_count":
                meter.n_bytes = val
            elif key == "duration":
                meter.duration = val
    return sorted(meters, key=lambda m: m.meter_id)
