"""The core's intent file encoding (IntentText): readable, equal to the intent's JSON, and cheap
for a change of one element among many (the fence create at 1000 fences re-encoded everything)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ryu_apps.framework.core import FabricCore, IntentText
from ryu_apps.framework.store import LocalStore
from ryu_apps.functions.cloud_router.intent import CloudRouterIntent
from ryu_apps.functions.fabric.intent import FabricIntent
from ryu_apps.functions.fenced_clone.intent import FencedCloneIntent, FenceSpec
from ryu_apps.functions.multicast_standby.intent import MulticastIntent
from ryu_apps.functions.oam_ecmp.intent import OamIntent

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"
MODELS = {"fabric": FabricIntent, "fenced_clone": FencedCloneIntent, "multicast_standby": MulticastIntent,
          "cloud_router": CloudRouterIntent, "oam_ecmp": OamIntent}


def _fences(n: int) -> FencedCloneIntent:
    return FencedCloneIntent.model_validate({"nd_rate_per_clone": 20, "fences": [
        {"name": f"f{k}", "parent": ["web", "db"], "members": [{"component": "web", "host": f"c{k}"}],
         "egress": {"policy": "allow", "to": ["10.0.9.0/24"]} if k % 2 else {"policy": "deny"}}
        for k in range(n)]})


def _shipped_intents():
    for path in sorted(TOPOLOGIES.glob("*.yaml")):
        for name, raw in (yaml.safe_load(path.read_text()).get("apps") or {}).items():
            if name in MODELS:
                yield pytest.param(MODELS[name].model_validate(raw or {}), id=f"{path.stem}-{name}")


@pytest.mark.parametrize("intent", [*_shipped_intents(), pytest.param(_fences(5), id="fences"),
                                    pytest.param(_fences(0), id="no-fences")])
def test_the_text_is_the_intents_json(intent):
    text = IntentText().encode(intent)
    assert json.loads(text) == intent.model_dump(mode="json")
    assert text.count("\n") >= len(getattr(intent, "fences", ()))  # one line per element: readable


def test_a_change_of_one_element_encodes_only_that_element(monkeypatch):
    enc = IntentText()
    intent = _fences(200)
    enc.encode(intent)
    calls = []
    real = FenceSpec.model_dump
    monkeypatch.setattr(FenceSpec, "model_dump", lambda self, **kw: calls.append(self.name) or real(self, **kw))
    new = FenceSpec.model_validate({"name": "new", "parent": ["web"]})
    changed = intent.fences[7].model_copy(update={"members": []})
    fences = [*intent.fences[:7], changed, *intent.fences[8:50], *intent.fences[51:], new]
    candidate = intent.model_copy(update={"fences": fences})
    text = enc.encode(candidate)
    assert sorted(calls) == ["f7", "new"]
    monkeypatch.setattr(FenceSpec, "model_dump", real)
    assert json.loads(text) == candidate.model_dump(mode="json")
    assert json.loads(enc.encode(intent)) == intent.model_dump(mode="json")  # back again: still right


def test_save_intent_writes_a_model_readably_and_atomically(tmp_path):
    core = SimpleNamespace(store=LocalStore(tmp_path / "state"), intent_texts={}, apps={"fenced_clone": object()})
    intent = _fences(3)
    FabricCore.save_intent(core, "fenced_clone", intent)
    FabricCore.save_intent(core, "fenced_clone", intent.model_copy(update={"fences": intent.fences[:2]}))
    files = sorted(p.name for p in (tmp_path / "state").iterdir())
    assert files == ["fenced_clone.json"]
    assert json.loads((tmp_path / "state" / "fenced_clone.json").read_text())["fences"] == \
        [f.model_dump(mode="json") for f in intent.fences[:2]]
    FabricCore.save_intent(core, "x.runtime", {"keys": {"a": 1}})  # runtime state: JSON data, compact
    assert (tmp_path / "state" / "x.runtime.json").read_text() == '{"keys":{"a":1}}'


def test_local_store_collections_journal_their_changes_and_survive_a_restart(tmp_path):
    """A collection change is one journal line (not a rewrite of every item); a new store reads the
    snapshot and the journal back; a line cut short by a crash loses only its own batch."""
    from ryu_apps.framework import store as store_mod

    st = store_mod.LocalStore(tmp_path)
    for i in range(3000):
        st.put_items("c", {f"k{i}": json.dumps({"i": i, "pad": "x" * 40})})
    st.put_items("c", {"k5": None, "k6": json.dumps({"i": -6})})
    log = tmp_path / "c.items.log"
    assert (tmp_path / "c.items.json").exists() and log.stat().st_size < 2 * store_mod.JOURNAL_MIN + 200
    again = store_mod.LocalStore(tmp_path).items("c")
    assert len(again) == 2999 and "k5" not in again and json.loads(again["k6"]) == {"i": -6}
    assert {k: json.loads(v) for k, v in again.items()} == {k: json.loads(v) for k, v in st.items("c").items()}
    with open(log, "a") as f:
        f.write('{"k7": {"i": 77')               # a crash in the middle of a write
    assert store_mod.LocalStore(tmp_path).items("c") == again
