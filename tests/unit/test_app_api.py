"""Apps use only the documented core API (``CORE_API`` in framework/app.py) and register no
os-ken handlers of their own: the core owns every switch event (issue 10)."""

import ast
from pathlib import Path

import pytest

from ryu_apps.framework.app import CORE_API
from ryu_apps.framework.core import FabricCore

ROOT = Path(__file__).resolve().parents[2]
APPS = sorted((ROOT / "ryu_apps").glob("*.py")) + [ROOT / "ovs_scripts" / "bench_app.py"]
APPS = [p for p in APPS if p.name not in ("__init__.py", "manager.py")]


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
    missing = [n for n in CORE_API if not hasattr(FabricCore, n) and n not in ("topology", "generation",
                                                                                "compute_error")]
    assert not missing
