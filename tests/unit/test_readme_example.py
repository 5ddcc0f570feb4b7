"""The minimal app in README's "Writing an app" compiles, is a v2 app, and computes valid state."""

import re
from pathlib import Path
from types import SimpleNamespace

from ryu_apps.framework import pipeline
from ryu_apps.framework.topology import load
from ryu_apps.framework.view import FabricView

ROOT = Path(__file__).resolve().parents[2]


def test_readme_example_app():
    text = (ROOT / "README.md").read_text()
    section = text.split("### Writing an app", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    ns: dict = {}
    exec(compile(code, "README.md:Writing an app", "exec"), ns)
    block, intent_model = ns["Block"], ns["BlockIntent"]
    assert not block.LEGACY
    intent = intent_model(blocked=["10.9.0.1", "10.9.0.2"])
    view = FabricView(load(ROOT / "topologies" / "chain3.yaml"))
    me = SimpleNamespace(APP_NAME=block.APP_NAME)
    assert list(block.parts(me, intent)) == ["10.9.0.1", "10.9.0.2"]
    states = block.compute(me, view, intent, "10.9.0.1")
    assert set(states) == {"s1", "s2", "s3"}
    for st in states.values():
        for flow in st.flows.values():
            pipeline.check_flow(block.APP_NAME, flow)
            assert flow.match.to_dict()["ipv4_dst"] == "10.9.0.1" and not flow.actions
