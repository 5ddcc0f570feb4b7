"""The live page (``GET /ui``) in a real browser: Debian's headless Chromium, driven by selenium.

The page polls the controller's REST API every second and must show a change within 2 s:

* ``topologies/diamond.yaml`` (the base fabric): the page loads without a SEVERE console
  entry, shows every switch, host and switch-switch link of the lab, draws ``s1:11-s2:11``
  down within 2 s of ``lab.link("s1", "s2", "down")`` and up again after ``"up"``;
* ``topologies/cloud_router.yaml``: a client roaming to another access point
  (``Lab.move_host``, then a frame of its own at the new AP) shows at its new AP within 2 s
  of the controller locating it there.

The page's elements carry ``data-switch``, ``data-host``, ``data-link`` (``a:port-b:port``, in
the order ``/v1/topology`` gives, with ``data-state`` up|down) and ``data-client`` (``data-ap``:
the client's switch now).  The browser is kept off every network but 127.0.0.1.
Screenshots go to the test's tmp dir; the diamond's also to ``docs/ui.png`` when that is missing
or ``UPDATE_UI_DOC=1`` (it is committed: a run does not rewrite it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from ovs_scripts import kit
from tests.integration import conftest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
UPDATE_S = 2.0  # a change shows on the page within this
DOC_SHOT = REPO / "docs" / "ui.png"  # the README's picture (UPDATE_UI_DOC=1 refreshes it)


def _browser_skip_reason() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        return f"the browser test needs Debian's chromium and chromium-driver ({', '.join(missing)} missing)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the browser test needs selenium (requirements.txt)"
    return None


@pytest.fixture(scope="module", autouse=True)
def _require_browser():  # module scope: checked before a lab is built
    reason = _browser_skip_reason()
    if reason:
        pytest.skip(reason)


@contextlib.contextmanager
def browser(log_dir: Path):
    """A headless Chromium (stopped on exit) that can reach 127.0.0.1 only and keeps console logs."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,820",
                "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions", "--disable-sync",
                "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
                # no name resolves (no DNS, no traffic) except the controller's address
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(log_dir / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    try:
        driver.set_page_load_timeout(20)
        yield driver
    finally:
        driver.quit()


def severe(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def page_state(driver) -> dict:
    """What the page shows now: switches, hosts, links with their state, clients with their AP."""
    return driver.execute_script("""
        const all = (sel, f) => Object.fromEntries([...document.querySelectorAll(sel)].map(f));
        return {
          switches: [...document.querySelectorAll('#topology [data-switch]')].map(e => e.dataset.switch),
          hosts: all('#topology [data-host]', e => [e.dataset.host, e.dataset.switchAt]),
          links: all('#topology [data-link]', e => [e.dataset.link, e.dataset.state]),
          clients: all('[data-client]', e => [e.dataset.client, e.dataset.ap]),
          status: (document.getElementById('status') || {}).textContent,
        };""")


def open_page(driver, lab, ready) -> dict:
    """Load ``/ui`` of the lab's controller; the page state once ``ready(state)`` holds (10 s)."""
    driver.get(f"{lab.rest_url}/ui")
    state = kit.wait_for(lambda: (lambda s: s if ready(s) else None)(page_state(driver)), 10, step=0.1)
    assert state, f"the page did not get ready: {page_state(driver)}"
    return state


def until(driver, pred, timeout: float, also=None) -> float | None:
    """Seconds until ``pred(page_state)`` holds (None: not within ``timeout``); ``also()`` is
    called on every turn (e.g. to note when REST shows the change)."""
    t0 = time.monotonic()
    while True:
        if also is not None:
            also()
        if pred(page_state(driver)):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(0.05)


def rest(lab, path):
    return kit.rest(lab, "GET", path, timeout=5).expect(200)


# -- the base fabric: diamond -----------------------------------------------------------


@pytest.fixture(scope="module")
def diamond(tmp_path_factory):
    with conftest.module_factory(tmp_path_factory, "ui_diamond") as factory:
        lab = factory("diamond.yaml")
        assert kit.wait_for(lambda: all(s["synced"] for s in rest(lab, "/v1/switches")), 20), \
            rest(lab, "/v1/switches")
        yield lab


def test_diamond_page_shows_the_fabric_and_follows_a_link(diamond, tmp_path):
    lab, topo = diamond, diamond.topology
    want_links = {ln.name for ln in topo.links}
    assert "s1:11-s2:11" in want_links, want_links
    with browser(tmp_path) as driver:
        state = open_page(driver, lab, lambda s: set(s["links"]) == want_links
                          and all(v == "up" for v in s["links"].values()))
        time.sleep(2.5)  # a few polls: none may log an error
        state = page_state(driver)
        assert set(state["switches"]) == set(topo.switches)
        assert set(state["hosts"]) == set(topo.hosts)
        assert set(state["links"]) == want_links and set(state["links"].values()) == {"up"}, state["links"]
        assert state["status"].startswith("updated"), state["status"]
        assert not severe(driver), severe(driver)
        shot = tmp_path / "diamond.png"
        driver.save_screenshot(str(shot))
        if os.environ.get("UPDATE_UI_DOC") == "1" or not DOC_SHOT.exists():  # not on every run: it is committed
            shutil.copyfile(shot, DOC_SHOT)

        # s1-s2 down: dashed red on the page within 2 s (REST noted for the report)
        seen = {}

        def rest_sees(up: bool):
            if "rest" not in seen and any(ln["name"] == "s1:11-s2:11" and ln["up"] is up
                                          for ln in rest(lab, "/v1/topology")["links"]):
                seen["rest"] = time.monotonic() - seen["t0"]

        seen["t0"] = time.monotonic()
        lab.link("s1", "s2", "down")
        took = until(driver, lambda s: s["links"].get("s1:11-s2:11") == "down", UPDATE_S + 3,
                     also=lambda: rest_sees(False))
        driver.save_screenshot(str(tmp_path / "diamond-s1-s2-down.png"))
        others = {k: v for k, v in page_state(driver)["links"].items() if k != "s1:11-s2:11"}
        print(f"\ns1-s2 down: on the page after {took} s (REST after {seen.get('rest')} s)")
        assert took is not None and took <= UPDATE_S, f"link down shown after {took} s"
        assert set(others.values()) == {"up"}, others
        down_style = driver.execute_script("""
            const p = document.querySelector('[data-link="s1:11-s2:11"] path'), cs = getComputedStyle(p);
            return [cs.stroke, cs.strokeDasharray];""")
        assert down_style[1] not in ("", "none"), down_style  # dashed

        seen.clear()
        seen["t0"] = time.monotonic()
        lab.link("s1", "s2", "up")
        took = until(driver, lambda s: s["links"].get("s1:11-s2:11") == "up", UPDATE_S + 3,
                     also=lambda: rest_sees(True))
        print(f"s1-s2 up: on the page after {took} s (REST after {seen.get('rest')} s)")
        assert took is not None and took <= UPDATE_S, f"link up shown after {took} s"
        driver.save_screenshot(str(tmp_path / "diamond-s1-s2-up.png"))
        assert not severe(driver), severe(driver)


# -- a function: the cloud router's roaming client --------------------------------------


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    from ovs_scripts.scenarios.cloud_router import CloudLab

    with conftest.module_factory(tmp_path_factory, "ui_cloud") as factory:
        c = CloudLab(factory(REPO / "topologies" / "cloud_router.yaml"))
        assert c.wait_ready(), c.rest("/v1/cloud_router")
        yield c


def client_frame(mac: str, ip: str, dst: str = "10.61.0.1") -> str:
    """A UDP frame from a client to the gateway's MAC (what the AP punts for a client new at a port)."""
    a = lambda s: "".join(f"{int(x):02x}" for x in s.split("."))  # noqa: E731
    return ("0efab0000001" + mac.replace(":", "") + "0800" + "4500001c0001000040110000" + a(ip) + a(dst)
            + "1770177100080000")


def test_cloud_router_client_roams_on_the_page(cloud, tmp_path):
    lab, host = cloud.lab, "c1"
    mac = cloud.mac(host)
    with browser(tmp_path) as driver:
        open_page(driver, lab, lambda s: s["clients"].get(mac) == "ap1" and s["hosts"].get(host) == "ap1")
        assert not severe(driver), severe(driver)
        driver.save_screenshot(str(tmp_path / "cloud_router.png"))
        for switch, port in (("ap2", 10), ("ap3", 10)):
            t0 = time.monotonic()
            cloud.move(host, switch, port)
            # the client speaks at its new AP (as after re-association); the AP punts it, the controller moves it
            ip = str(lab.topology.hosts[host].ipv4.ip)
            lab.exec(host, [sys.executable, "-m", "ovs_scripts.traffic", "send-frames", client_frame(mac, ip),
                            "--repeat", "3", "--interval", "0.2"])
            located = cloud.wait_location(host, switch, port, timeout=10)
            assert located is not None, f"the controller did not locate {host} at {switch}:{port}"
            t_rest = time.monotonic() - t0
            took = until(driver, lambda s: s["clients"].get(mac) == switch and s["hosts"].get(host) == switch,
                         UPDATE_S + 3)
            t_page = time.monotonic() - t0
            print(f"\n{host} -> {switch}:{port}: REST located it {t_rest:.2f} s after the move, "
                  f"the page {t_page:.2f} s after ({took} s after REST)")
            driver.save_screenshot(str(tmp_path / f"cloud_router-{switch}.png"))
            assert took is not None and took <= UPDATE_S, f"the roam to {switch} showed {took} s after REST"
        assert not severe(driver), severe(driver)
