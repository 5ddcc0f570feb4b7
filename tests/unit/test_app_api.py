"""Apps use only the documented core API (``CORE_API`` in framework/app.py) and register no
os-ken handlers of their own: the core owns every switch event (issue 10)."""

import ast
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
APPS = sorted((ROOT / "ryu_apps").glob("*.py")) + [ROOT / "ovs_scripts" / "bench_app.py"]
APPS = [p for p in APPS if p.name not in ("__init__.py", "manager.py")]


def _core_api() -> frozenset:
    """CORE_API as written in framework/app.py (read, not imported: no os-ken in this process)."""
    tree = ast.parse((ROOT / "ryu_apps" / "framework" / "app.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CORE_API" for t in node.targets):
            return frozenset(ast.literal_eval(node.value.args[0]))
    raise AssertionError("CORE_API not found in framework/app.py")


CORE_API = _core_api()


def core_uses(path: Path) -> set[str]:
    """Attributes read on ``self.core`` (or a local named ``core``) in one module."""
    used = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "core" and isinstance(node.value.value, ast.Name) \
                and node.value.value.id == "self":
            used.add(node.attr)
    return used


@pytest.mark.parametrize("path", APPS, ids=lambda p: p.name)
def test_apps_use_only_the_core_api(path):
    outside = core_uses(path) - CORE_API
    assert not outside, f"{path.name} reads core internals {sorted(outside)}; use the API in CORE_API"


@pytest.mark.parametrize("path", APPS, ids=lambda p: p.name)
def test_apps_register_no_os_ken_handlers(path):
    text = path.read_text()
    assert "set_ev_cls" not in text, f"{path.name} registers its own os-ken handler; use the core's hooks"


def test_every_api_name_exists_on_the_core():
    # read core.py's source rather than importing it: importing os-ken here would bring its
    # eventlet hub into this test process
    tree = ast.parse((ROOT / "ryu_apps" / "framework" / "core.py").read_text())
    core = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FabricCore")
    names = {n.name for n in core.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for n in ast.walk(core):
        targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign) else []
        names |= {t.attr for t in targets if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                  and t.value.id == "self"}
    missing = sorted(n for n in CORE_API if n not in names)
    assert not missing, missing
