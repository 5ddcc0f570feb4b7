"""Incremental recompute (issue 10): event to committed, controller compute and hub blocked, before and after.

Four events, each on a real lab (private OVS, namespaces, the controller process) built the
way the function's own benchmark builds it, repeated ``--reps`` times (median and max printed):

* a) roam: one association report (``POST /v1/cloud_router/locations``) moves one client to
  another access point, with 10,000 clients registered and located (``bench/cloud_router.py``'s
  scale part: one intent PUT, one batch of reports);
* b) link flap: the s2-s3 trunk of ``bench/fenced_clone.py``'s control lab cut and restored
  (``Lab.link``: the veths go down / up) with 1000 fences present; down and up are two rows;
* c) fence created: one more fence ``POST /v1/fences`` with 1000 present;
* d) multicast join: one receiver's kernel joins one more group (one IGMP report) while
  ``bench/multicast_standby.py``'s setup runs: 100 groups x 10 destination devices, a source
  sending to every group, every standby path programmed.

Figures per event:

* event-to-committed: from the event (just before the REST call is sent / the link is cut /
  the joining socket's setsockopt, stamped in its namespace on the shared CLOCK_MONOTONIC) until
  ``GET /v1/switches`` (polled every 5 ms) shows every switch synced and at least one switch at a
  newer version than before the event (the switches the event changed).  "settled" is the same
  after the activity the event set off has settled (e.g. the standby path requested after a
  join); "request" is how long the REST call took to answer (the link cut: the ip commands);
* compute: what the controller reports: ``/v1/health`` ``last_compute_seconds`` (the core's
  recompute loop), in framework v2 also ``recompute.by_app`` (the apps whose entry changed), and
  the app's own figure where it has one (cloud router ``last_compute``, the fence POST's
  ``seconds.compute``);
* hub blocked, from outside: a probe thread sends ``GET /v1/pipeline`` every 5 ms over one
  keep-alive connection during the event window (from the event until 0.5 s after the last
  version change it caused; d: 1.7 s); its worst latency is how long the controller's single
  eventlet hub could not answer.  Framework v2 also measures it inside (``/v1/health``
  ``hub_blocked_ms.max_last_10s``; before each event the bench waits up to 2 s for that window
  to hold nothing over 10 ms, but it also holds stalls that are not the event's, e.g. the
  periodic audit).  After each lab's setup the probe also runs 12 s with no event at all.

Before and after, side by side (the code before framework v2 is commit b228697)::

    git worktree add --detach /tmp/rc-before b228697
    .venv/bin/python bench/recompute.py --compare /tmp/rc-before
    git worktree remove /tmp/rc-before

runs every scenario once with that tree (this file re-executed with cwd and PYTHONPATH set to it:
its lab, topologies, bench helpers and controller) and once with this tree, then prints one
table.  ``--only a,b`` picks scenarios, ``--quick`` smaller sizes (1000 clients, 100 fences,
10 groups x 10) for smoke runs.  Figures only, no pass/fail.  Traffic stays inside the labs'
namespaces, REST on loopback; every lab is torn down at the end, on Ctrl-C and on errors.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import ipaddress
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import yaml


def _tree() -> Path:
    """The source tree under test: ``--tree DIR`` (set when ``--compare`` re-executes), else this one."""
    if "--tree" in sys.argv[1:-1]:
        return Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()
    return Path(__file__).resolve().parents[1]


ROOT = _tree()
sys.path.insert(0, str(ROOT))

from ovs_scripts.lab import Lab  # noqa: E402

PY = sys.executable
POLL = 0.005        # GET /v1/switches while waiting for the commit
PROBE_PERIOD = 0.005
QUIET_MS = 10.0     # the controller's own hub monitor must show nothing over this before an event
SCENARIOS = {"a": "a) roam", "b": "b) link down", "b+": "b) link up", "c": "c) fence created",
             "d": "d) multicast join"}
FULL = {"clients": 10000, "fences": 1000, "groups": 100}
QUICK = {"clients": 1000, "fences": 100, "groups": 10}


def _bench(name: str):
    """``bench/<name>.py`` of the tree under test, as a module (its helpers build the big intents)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _topology_file(workdir: Path, data: dict, name: str, prefix: str) -> Path:
    """``data`` as a lab of our own: name, prefix and free controller ports (other labs may be running)."""
    data["lab"] = {**data.get("lab", {}), "name": name, "prefix": prefix}
    data["controller"] = {**data.get("controller", {}), "of_port": _free_port(), "rest_port": _free_port()}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


_KEEP: list[str] = []   # labs whose teardown failed: their run directory must stay
LOGS: list[Path] = []   # --logs DIR: where each lab's controller log is copied before teardown


def _down(lab: Lab, procs: list[subprocess.Popen] = ()) -> None:
    """Tear a lab down (its processes first); Ctrl-C / SIGTERM cannot interrupt it (a second
    Ctrl-C would otherwise leave half a lab behind).  A failure is reported and keeps the run
    directory, so ``ovslab down`` can finish the job."""
    masked = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for d in LOGS:
            with contextlib.suppress(OSError):
                d.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(lab.dir / "controller.log", d / f"{ROOT.name}-{lab.dir.name}-controller.log")
        for p in procs:
            if p.poll() is None:
                p.terminate()
        lab.down()
    except Exception as exc:  # noqa: BLE001
        _KEEP.append(str(lab.dir))
        print(f"teardown of {lab.dir} failed: {exc}; finish it with "
              f"OVSLAB_RUNDIR={lab.dir.parent} .venv/bin/ovslab down {lab.dir.name}", file=sys.stderr, flush=True)
    finally:
        for sig, handler in masked.items():
            signal.signal(sig, handler)


# -- talking to the controller --------------------------------------------------------------


class Http:
    """One keep-alive HTTP connection to the controller's REST API (one per thread)."""

    def __init__(self, url: str, timeout: float = 120):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.timeout = u.hostname, u.port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def __call__(self, path: str, method: str = "GET", body=None):
        """``(status, decoded body)``; a GET on a connection the server closed is retried once."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                self.conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
                r = self.conn.getresponse()
                raw = r.read()
                if (r.getheader("Connection") or "").lower() == "close":
                    self.close()
                return r.status, json.loads(raw or b"null")
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt or method != "GET":
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str):
        status, body = self(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body}")
        return body


class Probe:
    """A thread sending ``GET /v1/pipeline`` every 5 ms; the worst latency in a window.

    A request that arrives while the controller's hub is blocked is answered when it runs
    again, so the worst latency is (within the 5 ms period) the longest stall.
    """

    def __init__(self, url: str):
        self.http = Http(url, timeout=300)
        self.samples: list[tuple[float, float]] = []   # (sent, latency)
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        while not self.samples and self._thread.is_alive():
            time.sleep(0.001)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=330)
        self.http.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.http("/v1/pipeline")
            except (http.client.HTTPException, OSError):
                self.errors += 1
            dt = time.monotonic() - t0
            self.samples.append((t0, dt))
            self._stop.wait(max(0.0, PROBE_PERIOD - dt))

    def worst_ms(self, start: float, end: float) -> float | None:
        """The longest request overlapping [start, end], in ms."""
        lat = [d for t, d in self.samples if t <= end and t + d >= start]
        return round(1000 * max(lat), 2) if lat else None

    def typical_ms(self, before: float) -> float | None:
        """Median latency before ``before`` (the probe's floor on this machine now)."""
        lat = [d for t, d in self.samples if t + d < before]
        return round(1000 * statistics.median(lat), 2) if lat else None


def switch_states(http: Http) -> dict[str, dict]:
    return {s["name"]: s for s in http.get("/v1/switches")}


def wait_all_synced(http: Http, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(s["synced"] for s in switch_states(http).values()):
            return
        time.sleep(0.05)
    raise RuntimeError(f"switches not synced after {timeout} s: "
                       f"{[n for n, s in switch_states(http).items() if not s['synced']]}")


def versions(http: Http) -> dict[str, int]:
    return {n: s["version"] for n, s in switch_states(http).items()}


def wait_changed_synced(http: Http, before: dict[str, int], switches=None, timeout: float = 1800) -> None:
    """Until each of ``switches`` (default: at least one switch) is at a newer version than
    ``before`` and every switch is synced."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sws = switch_states(http)
        newer = [n for n in sws if sws[n]["version"] > before.get(n, -1)]
        if (set(switches or ()) <= set(newer) and newer) and all(s["synced"] for s in sws.values()):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{sorted(switches)} not changed and synced after {timeout} s")


def wait_hub_quiet(http: Http) -> float | None:
    """Framework v2 only: wait (at most 2 s) until the hub monitor's 10 s window is quiet; its max then."""
    for _ in range(20):
        lag = http.get("/v1/health").get("hub_blocked_ms")
        if lag is None:
            return None
        if lag["max_last_10s"] <= QUIET_MS:
            return lag["max_last_10s"]
        time.sleep(0.1)
    return lag["max_last_10s"]


def wait_committed(http: Http, before: dict[str, int], t0: float, settle: float, timeout: float) -> dict:
    """Poll until every switch is synced and some switch is at a newer version than ``before``.

    ``first``: the first time that holds; ``last``: the last time it holds again after a
    further version change, once no version has changed for ``settle`` seconds.
    """
    first = last = None
    pending = False
    slowest = 0.0
    prev: dict[str, int] | None = None
    changed_at = t0
    deadline = t0 + timeout
    while True:
        asked = time.monotonic()
        sws = switch_states(http)
        now = time.monotonic()
        slowest = max(slowest, now - asked)
        versions = {n: s["version"] for n, s in sws.items()}
        if versions != prev:
            prev, changed_at, pending = versions, now, True
        bumped = [n for n, v in versions.items() if v > before.get(n, -1)]
        if bumped and all(s["synced"] for s in sws.values()):
            if first is None:
                first = now
            if pending:
                last, pending = now, False
            if now - changed_at >= settle:
                break
        if now > deadline:
            break
        time.sleep(POLL)
    return {"first_ms": None if first is None else round(1000 * (first - t0), 2),
            "last_ms": None if last is None else round(1000 * (last - t0), 2),
            "switches_changed": sorted(n for n, v in (prev or {}).items() if v > before.get(n, -1)),
            "slowest_poll_ms": round(1000 * slowest, 2),
            "end": last or now}


def idle(url: str, seconds: float = 12.0) -> dict:
    """The probe with no event at all: what the hub does on its own (periodic audit, polling)."""
    h = Http(url)
    try:
        wait_all_synced(h)
        with Probe(url) as probe:
            t0 = time.monotonic()
            time.sleep(seconds)
            end = time.monotonic()
        lag = h.get("/v1/health").get("hub_blocked_ms")
        return {"seconds": seconds, "hub_probe_ms": probe.worst_ms(t0, end), "probe_floor_ms": probe.typical_ms(end),
                "hub_controller_ms": None if lag is None else lag["max_last_10s"]}
    finally:
        h.close()


def measure(url: str, fire, settle: float = 0.3, timeout: float = 120, app_figure=None, app_first=False) -> dict:
    """One event: wait until the controller is idle, fire it, wait for the commit, collect the figures.

    ``fire()`` causes the event and returns ``(t0, info)``: the event's CLOCK_MONOTONIC time
    and anything worth keeping (e.g. the REST answer).  ``app_figure(info)``: the app's own
    compute figure in seconds, or None; ``app_first``: it is the controller's compute for this
    event (a REST change computed in the request, not by the core's recompute loop).
    """
    h = Http(url, timeout=900)
    try:
        wait_all_synced(h)
        time.sleep(0.3)
        quiet = wait_hub_quiet(h)
        before = versions(h)
        health0 = h.get("/v1/health")
        with Probe(url) as probe:
            time.sleep(0.1)  # the probe's floor before the event
            t0, info = fire()
            request_ms = round(1000 * (time.monotonic() - t0), 2)  # the REST call answered / the link cut
            done = wait_committed(h, before, t0, settle, timeout)  # returns `settle` s after the last change
            done.pop("end")
            time.sleep(0.2)  # what the event sets off after its last change (saving state, ...)
            end = time.monotonic()
        health1 = h.get("/v1/health")
        by0 = (health0.get("recompute") or {}).get("by_app") or {}
        by1 = (health1.get("recompute") or {}).get("by_app") or {}
        apps = {a: s["seconds"] for a, s in by1.items() if s != by0.get(a)}
        lag = health1.get("hub_blocked_ms")
        return {**done, "request_ms": request_ms,
                "compute_core_s": health1.get("last_compute_seconds"),
                "core_recomputed": health1.get("generation") != health0.get("generation"),
                "compute_by_app_s": apps if "recompute" in health1 else None,
                "compute_app_s": app_figure(info) if app_figure else None, "compute_app_first": app_first,
                "answer_seconds": info.get("seconds") if isinstance(info, dict) else None,  # a REST answer's timing
                "hub_probe_ms": probe.worst_ms(t0, end), "probe_floor_ms": probe.typical_ms(t0),
                "probe_errors": probe.errors,
                "hub_controller_ms": None if lag is None else lag["max_last_10s"], "hub_quiet_before_ms": quiet,
                "compute_error": health1.get("compute_error")}
    finally:
        h.close()


# -- (a) cloud router: one roam among N clients ---------------------------------------------


def scenario_roam(workdir: Path, n: int, reps: int) -> dict:
    crb = _bench("cloud_router")
    from ovs_scripts.scenarios.cloud_router import CloudLab

    path = _topology_file(workdir, yaml.safe_load(crb.TOPO.read_text()), "rc_cloud", "rcr")
    lab = Lab.up(path, controller=True, timeout=120, rundir=workdir / "run")
    try:
        cl = CloudLab(lab)
        if not cl.wait_ready(60):
            raise RuntimeError(f"cloud router lab not ready: {cl.rest(f'/v1/{crb.APP}')}")
        h = Http(lab.rest_url, timeout=1800)
        intent = h.get(f"/v1/apps/{crb.APP}/intent")
        aps = intent["tiers"]["access_points"]
        # the clients of bench/cloud_router.py's scale part: same addresses, policies and radio ports
        macs = [f"02:70:{i >> 16 & 0xff:02x}:{i >> 8 & 0xff:02x}:{i & 0xff:02x}:01" for i in range(n)]
        intent["clients"] = {**intent.get("clients", {}),
                             **{m: {"policy": ("staff", "guest", "contractor")[i % 3],
                                    "ipv4": f"10.60.{100 + (i >> 8)}.{i & 0xff}"} for i, m in enumerate(macs)}}
        setup = {"clients": n}
        t, v = time.monotonic(), versions(h)
        status, body = h(f"/v1/apps/{crb.APP}/intent", "PUT", intent)
        if status not in (200, 202):
            raise RuntimeError(f"register {n} clients: {status} {body}")
        wait_changed_synced(h, v)  # the NACs and forwarders (before v2 the access points do not change)
        setup["register_s"] = round(time.monotonic() - t, 2)
        at = {m: aps[i % len(aps)] for i, m in enumerate(macs)}
        reports = [{"client": m, "switch": at[m], "port": 1000 + (i // len(aps)) % 64} for i, m in enumerate(macs)]
        t, v = time.monotonic(), versions(h)
        status, body = h(f"/v1/{crb.APP}/locations", "POST", {"reports": reports})
        if status != 200:
            raise RuntimeError(f"locate {n} clients: {status} {body}")
        wait_changed_synced(h, v, aps)
        setup["locate_s"] = round(time.monotonic() - t, 2)
        setup["flows"] = sum(s["flows"] for s in switch_states(h).values())
        h.close()
        events = []
        for i in range(reps):
            mac = macs[i * 7 % n]
            new_ap = aps[(aps.index(at[mac]) + 1 + i) % len(aps)]
            rh = Http(lab.rest_url, timeout=300)

            def fire(mac=mac, new_ap=new_ap, rh=rh):
                t0 = time.monotonic()
                status, body = rh(f"/v1/{crb.APP}/locations", "POST",
                                  {"reports": [{"client": mac, "switch": new_ap, "port": 1999}]})
                if status != 200:
                    raise RuntimeError(f"roam report: {status} {body}")
                return t0, body

            def app_figure(_, rh=rh):
                return rh.get(f"/v1/{crb.APP}").get("last_compute", {}).get("seconds")

            ev = measure(lab.rest_url, fire, app_figure=app_figure)
            rh.close()
            at[mac] = new_ap
            events.append(ev)
            _progress("a", i, ev)
        setup["idle"] = idle(lab.rest_url)
        return {"a": {"setup": setup, "events": events}}
    finally:
        _down(lab)


# -- (b), (c) fenced clone: a link flap and one fence created among N ------------------------


def scenario_fences(workdir: Path, n: int, reps: int, which: set[str]) -> dict:
    fcb = _bench("fenced_clone")

    def topo(background: int) -> dict:
        data = fcb.topology(background, "rcf")
        data["lab"]["name"] = "rc_fences"
        return data

    path = _topology_file(workdir, topo(0), "rc_fences", "rcf")
    lab = Lab.up(path, controller=True, timeout=120, rundir=workdir / "run")
    try:
        # as bench/fenced_clone.py: the background fences' clones are declared, not built
        full = topo(n)
        full["controller"] = yaml.safe_load(path.read_text())["controller"]  # the same ports
        (lab.dir / "topology.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
        setup = {"fences": n}
        t = time.monotonic()
        lab.restart_controller(timeout=1800)
        setup["restart_s"] = round(time.monotonic() - t, 2)
        background = [fcb.fence(f"bg{k}", [f"x{k}_{j}" for j in range(fcb.COMPONENTS)]) for k in range(1, n + 1)]
        h = Http(lab.rest_url)
        t, v = time.monotonic(), versions(h)
        status, body = fcb.rest(lab, "PUT", "/v1/apps/fenced_clone/intent", {"fences": background}, timeout=1800)
        if status not in (200, 202):
            raise RuntimeError(f"PUT {n} fences: {status} {body}")
        wait_changed_synced(h, v, list(fcb.SWITCHES))
        setup["bulk_s"] = round(time.monotonic() - t, 2)
        setup["flows"] = sum(s["flows"] for s in switch_states(h).values())
        h.close()
        setup["idle"] = idle(lab.rest_url)
        out: dict = {}
        if "b" in which:
            out["b"], out["b+"] = {"setup": setup, "events": []}, {"setup": setup, "events": []}
            for i in range(reps):
                for key, state in (("b", "down"), ("b+", "up")):
                    def fire(state=state):
                        t0 = time.monotonic()
                        lab.link("s2", "s3", state)
                        return t0, None

                    ev = measure(lab.rest_url, fire)
                    out[key]["events"].append(ev)
                    _progress(key, i, ev)
        if "c" in which:
            out["c"] = {"setup": setup, "events": []}
            spec = fcb.fence("measured", [f"m{j}" for j in range(fcb.COMPONENTS)])
            for i in range(reps):
                rh = Http(lab.rest_url, timeout=300)

                def fire(rh=rh):
                    t0 = time.monotonic()
                    status, body = rh("/v1/fences", "POST", spec)
                    if status != 201:
                        raise RuntimeError(f"POST /v1/fences: {status} {body}")
                    return t0, body

                ev = measure(lab.rest_url, fire,
                             app_figure=lambda body: ((body or {}).get("seconds") or {}).get("compute"), app_first=True)
                rh.close()
                out["c"]["events"].append(ev)
                _progress("c", i, ev)
                status, body = fcb.rest(lab, "DELETE", "/v1/fences/measured?wait=1")
                if status != 200:
                    raise RuntimeError(f"DELETE /v1/fences/measured: {status} {body}")
        return out
    finally:
        _down(lab)


# -- (d) multicast: one more join among groups x 10 destinations -----------------------------

JOINER = r"""
import socket, struct, sys, time
group = sys.argv[1]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
mreq = socket.inet_aton(group) + socket.inet_aton("0.0.0.0") + struct.pack("@i", socket.if_nametoindex("eth0"))
print("ready", flush=True)
sys.stdin.readline()
t = time.monotonic()
sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)  # the kernel sends the report now
print(t, flush=True)
sys.stdin.readline()  # the membership is held until the bench closes stdin
"""


def scenario_multicast(workdir: Path, groups: int, reps: int) -> dict:
    mcb = _bench("multicast_standby")
    path = mcb.prepare(mcb.BENCH_TOPO, workdir, "rcm", query_interval=0, silence_ms=0)
    lab = Lab.up(path, controller=True, timeout=120, rundir=workdir / "run")
    procs: list[subprocess.Popen] = []
    try:
        rest = mcb.Rest(lab.rest_url)
        receivers = [h for h in lab.topology.hosts if h != "h0"]
        joiner = receivers[-1]
        first = "239.8.0.1"
        # as bench/multicast_standby.py's setup, but the joining receiver holds the last
        # `reps` groups back: each event is its kernel joining one of them
        held = max(0, groups - reps)
        for h in receivers:
            k = groups if h != joiner else held
            if k:
                p = lab.popen(h, [PY, "-u", "-m", "ovs_scripts.traffic", "mcast-join", first, "--groups", str(k),
                                  "--seconds", "3600", "--igmp-version", "3"])
                procs.append(p)
                if "joined" not in p.stdout.readline():
                    raise RuntimeError(f"{h}: mcast-join failed")
        want = groups * (len(receivers) - 1) + held
        setup = {"groups": groups, "destinations": want + min(reps, groups)}
        t = time.monotonic()
        if not mcb.wait_for(lambda: rest("/v1/multicast")["memberships"] >= want, 120, 0.2):
            raise RuntimeError(f"memberships {rest('/v1/multicast')['memberships']} of {want}")
        procs.append(lab.popen("h0", [PY, "-u", "-m", "ovs_scripts.traffic", "mcast-send", first, "5000",
                                      "--groups", str(groups), "--rate", str(groups * 10), "--seconds", "600"]))

        def ready() -> bool:
            s = rest("/v1/multicast")
            return (s["channels"] >= groups and s["standby_complete"] >= want
                    and mcb.programmed(rest, lab, "standby"))

        if not mcb.wait_for(ready, 400, 0.5):
            raise RuntimeError(f"standby paths never all programmed: {rest('/v1/multicast')}")
        setup["setup_s"] = round(time.monotonic() - t, 2)
        events = []
        for i in range(min(reps, groups)):
            group = str(ipaddress.IPv4Address(first) + held + i)
            p = lab.popen(joiner, [PY, "-u", "-c", JOINER, group], stdin=subprocess.PIPE)
            procs.append(p)
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{joiner}: joiner did not start")

            def fire(p=p):
                p.stdin.write("go\n")
                p.stdin.flush()
                return float(p.stdout.readline()), None

            ev = measure(lab.rest_url, fire, settle=1.5)
            events.append(ev)
            _progress("d", i, ev)
        setup["standby_complete_after"] = rest("/v1/multicast")["standby_complete"]
        setup["idle"] = idle(lab.rest_url)
        return {"d": {"setup": setup, "events": events}}
    finally:
        _down(lab, procs)


# -- running and reporting ------------------------------------------------------------------


def _progress(key: str, i: int, ev: dict) -> None:
    print(f"  {SCENARIOS[key]:<18} #{i + 1}: committed {ev['first_ms']} ms (settled {ev['last_ms']} ms, "
          f"request {ev['request_ms']} ms, slowest poll {ev['slowest_poll_ms']} ms, "
          f"{len(ev['switches_changed'])} switches), hub probe {ev['hub_probe_ms']} ms"
          + (f", controller {ev['hub_controller_ms']} ms" if ev["hub_controller_ms"] is not None else "")
          + f", compute core {ev['compute_core_s']} s app {ev['compute_app_s']} by_app {ev['compute_by_app_s']}",
          flush=True)


def _git_head(root: Path) -> str:
    r = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %s"], capture_output=True,
                       text=True, check=False)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return (r.stdout.strip()[:70] or "?") + (" (+ uncommitted changes)" if dirty else "")


def run_tree(only: set[str], sizes: dict, reps: int) -> dict:
    """Every scenario asked for, on this tree; a failing scenario is reported, the others still run."""
    out = {"tree": str(ROOT), "head": _git_head(ROOT), "sizes": sizes, "reps": reps,
           "load_before": os.getloadavg(), "scenarios": {}}
    print(f"== {ROOT} ({out['head']}), load {out['load_before'][0]:.2f}", flush=True)
    runs = [("a", lambda w: scenario_roam(w, sizes["clients"], reps)),
            ("bc", lambda w: scenario_fences(w, sizes["fences"], reps, only & {"b", "c"})),
            ("d", lambda w: scenario_multicast(w, sizes["groups"], reps))]
    tmp = tempfile.mkdtemp(prefix="bench-rc-")
    try:
        for keys, run in runs:
            if not set(keys) & only:
                continue
            t = time.monotonic()
            try:
                out["scenarios"].update(run(Path(tmp)))
            except Exception as exc:  # noqa: BLE001 - report it, run the next scenario
                for k in keys:
                    if k in only:
                        out["scenarios"].setdefault(k, {"events": []})["error"] = f"{type(exc).__name__}: {exc}"
                    if k == "b" and "b" in only:
                        out["scenarios"].setdefault("b+", {"events": []})["error"] = f"{type(exc).__name__}: {exc}"
                print(f"  scenario {keys} failed: {type(exc).__name__}: {exc}", flush=True)
            print(f"  ({keys}: {time.monotonic() - t:.0f} s)", flush=True)
    finally:
        if not _KEEP:  # a lab not torn down keeps its state file here
            shutil.rmtree(tmp, ignore_errors=True)
    out["load_after"] = os.getloadavg()
    return out


def _vals(sc: dict | None, key: str) -> list[float]:
    return [e[key] for e in (sc or {}).get("events", []) if e.get(key) is not None]


def _mm(xs: list[float], unit: str = "") -> str:
    return f"{statistics.median(xs):.1f} / {max(xs):.1f}{unit}" if xs else "-"


def _compute(ev: dict) -> float | None:
    """The controller's compute for one event, in ms: v2 the apps it recomputed; before, the core
    recompute loop's (every app), or the app's own figure for a change computed in the REST request."""
    if ev.get("compute_by_app_s") is not None:
        return 1000 * sum(ev["compute_by_app_s"].values())
    if ev.get("compute_app_first") and ev.get("compute_app_s") is not None:
        return 1000 * ev["compute_app_s"]
    if ev.get("core_recomputed") and ev.get("compute_core_s") is not None:
        return 1000 * ev["compute_core_s"]
    return None


def report_tree(res: dict) -> None:
    print(f"\n{res['tree']} ({res['head']}); sizes {res['sizes']}, {res['reps']} events each; "
          f"load {res['load_before'][0]:.2f} -> {res['load_after'][0]:.2f}")
    print(f"{'scenario':<18} {'committed ms':>16} {'settled ms':>16} {'request ms':>16} {'compute ms':>14} "
          f"{'hub probe ms':>15} {'hub ctrl ms':>14} {'switches':>8}  (median / max)")
    shown = None
    for key, label in SCENARIOS.items():
        sc = res["scenarios"].get(key)
        if sc is None:
            continue
        if sc.get("error"):
            print(f"{label:<18} FAILED: {sc['error']}")
            if not sc.get("events"):
                continue
        evs = sc["events"]
        comp = [c for c in (_compute(e) for e in evs) if c is not None]
        nsw = [len(e["switches_changed"]) for e in evs]
        print(f"{label:<18} {_mm(_vals(sc, 'first_ms')):>16} {_mm(_vals(sc, 'last_ms')):>16} "
              f"{_mm(_vals(sc, 'request_ms')):>16} {_mm(comp):>14} "
              f"{_mm(_vals(sc, 'hub_probe_ms')):>15} {_mm(_vals(sc, 'hub_controller_ms')):>14} "
              f"{(max(nsw) if nsw else '-'):>8}")
        answers = [e["answer_seconds"] for e in evs if e.get("answer_seconds")]
        if answers:
            print(f"{'':<18} the REST answer's own timing (s): {answers}")
        if sc.get("setup") and sc["setup"] is not shown:
            shown = sc["setup"]
            print(f"{'':<18} setup {sc['setup']}; probe floor {_mm(_vals(sc, 'probe_floor_ms'))} ms")


LABS = {"a": "cloud router lab", "b": "fences lab", "b+": "fences lab", "c": "fences lab", "d": "multicast lab"}


def _idle(res: dict) -> dict[str, dict]:
    """The no-event probe of each lab the run built."""
    out = {}
    for key, sc in res["scenarios"].items():
        if (sc.get("setup") or {}).get("idle"):
            out.setdefault(LABS[key], sc["setup"]["idle"])
    return out


def report_compare(before: dict, after: dict) -> None:
    print(f"\nbefore: {before['tree']} ({before['head']})\nafter:  {after['tree']} ({after['head']})")
    print(f"sizes {after['sizes']}, {after['reps']} events each, median / max in ms; "
          f"load {before['load_before'][0]:.2f} (before run), {after['load_before'][0]:.2f} (after run)")
    head = (f"{'scenario':<18} | {'before committed':>16} | {'after':>14} | {'speed-up':>8} | "
            f"{'before hub blocked':>18} | {'after':>14} | {'after (ctrl)':>12} | target (<50 ms, >=20x)")
    print(head)
    print("-" * len(head))
    for key, label in SCENARIOS.items():
        b, a = before["scenarios"].get(key), after["scenarios"].get(key)
        if b is None and a is None:
            continue
        bc, ac = _vals(b, "first_ms"), _vals(a, "first_ms")
        bh, ah = _vals(b, "hub_probe_ms"), _vals(a, "hub_probe_ms")
        speed = f"{statistics.median(bc) / statistics.median(ac):.1f}x" if bc and ac else "-"
        verdict = []
        if ac:
            verdict.append(f"committed {'met' if statistics.median(ac) < 50 else 'MISSED'}")
        if bc and ac:
            verdict.append(f"20x {'met' if statistics.median(bc) / statistics.median(ac) >= 20 else 'MISSED'}")
        if ah:
            verdict.append(f"hub {'met' if max(ah) < 50 else 'MISSED'}")
        for side, sc in (("before", b), ("after", a)):
            if sc and sc.get("error"):
                verdict.append(f"{side} FAILED")
        print(f"{label:<18} | {_mm(bc):>16} | {_mm(ac):>14} | {speed:>8} | {_mm(bh):>18} | {_mm(ah):>14} | "
              f"{_mm(_vals(a, 'hub_controller_ms')):>12} | {', '.join(verdict) or '-'}")
    print("committed: event until every switch synced with the event's change (GET /v1/switches every 5 ms); "
          "hub blocked: worst latency of GET /v1/pipeline sent every 5 ms from the event until 0.5 s "
          "(d: 1.7 s) after the last change it caused (ctrl: the controller's own monitor, framework v2 only, "
          "max of its last 10 s: it includes stalls that are not the event's, see 'no event' below); targets on "
          "the median committed time and the worst hub block (probe)")
    print(f"\ncontroller compute (ms, median / max; before: {'the app or the core recompute loop'}, "
          f"after: the apps recomputed, /v1/health recompute.by_app)")
    for key, label in SCENARIOS.items():
        b, a = before["scenarios"].get(key), after["scenarios"].get(key)
        if b is None and a is None:
            continue
        bc = [c for c in (_compute(e) for e in (b or {}).get("events", [])) if c is not None]
        ac = [c for c in (_compute(e) for e in (a or {}).get("events", [])) if c is not None]
        print(f"{label:<18} | {_mm(bc):>16} | {_mm(ac):>14}")
    ib, ia = _idle(before), _idle(after)
    if ib or ia:
        print("\nhub blocked with no event at all (probe for 12 s after the lab's setup; ctrl: the controller's "
              "10 s window), ms")
        for lab in sorted(set(ib) | set(ia)):
            b, a = ib.get(lab, {}), ia.get(lab, {})
            print(f"{lab:<18} | before {b.get('hub_probe_ms', '-')!s:>9} | after {a.get('hub_probe_ms', '-')!s:>9} "
                  f"| after (ctrl) {a.get('hub_controller_ms', '-')!s:>9}")
    for side, res in (("before", before), ("after", after)):
        for key, sc in res["scenarios"].items():
            if sc.get("error"):
                print(f"{side} {SCENARIOS[key]}: {sc['error']}")


def _child(tree: Path, argv: list[str], out: Path) -> subprocess.Popen:
    """This bench re-executed on ``tree``: its cwd and first import path, so lab, topologies,
    bench helpers and the controller process are all that tree's."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), *paths]))
    return subprocess.Popen([PY, str(Path(__file__).resolve()), *argv, "--tree", str(tree), "--json", str(out)],
                            cwd=str(tree), env=env)


def _wait_child(p: subprocess.Popen) -> int:
    """Wait for a child run; on Ctrl-C (the terminal sends it to the child too) or SIGTERM (passed on)
    let it tear its labs down first."""
    try:
        return p.wait()
    except BaseException:
        if _SIGTERM and p.poll() is None:
            p.send_signal(signal.SIGTERM)
        while True:
            try:
                p.wait(timeout=600)
                break
            except KeyboardInterrupt:
                continue
            except subprocess.TimeoutExpired:
                p.kill()
                break
        raise


_SIGTERM: list[int] = []


def _interrupt(signum, frame) -> None:
    _SIGTERM.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", metavar="TREE", type=Path,
                    help="run on TREE (e.g. `git worktree add --detach /tmp/rc-before b228697`) and on this tree, "
                         "print both side by side")
    ap.add_argument("--only", default="a,b,c,d", help="scenarios, comma-separated (a,b,c,d)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes: 1000 clients, 100 fences, 10 groups x 10")
    ap.add_argument("--reps", type=int, default=5, help="events per scenario (default 5)")
    ap.add_argument("--clients", type=int, help="(a) clients (default 10000, quick 1000)")
    ap.add_argument("--fences", type=int, help="(b, c) fences present (default 1000, quick 100)")
    ap.add_argument("--groups", type=int, help="(d) groups, each with 10 destinations (default 100, quick 10)")
    ap.add_argument("--tree", type=Path, help=argparse.SUPPRESS)   # set by --compare for its runs
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    ap.add_argument("--logs", type=Path, help="copy each lab's controller log here (<tree>-<lab>-controller.log)")
    args = ap.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if not only <= {"a", "b", "c", "d"}:
        ap.error(f"--only: unknown scenarios {sorted(only - {'a', 'b', 'c', 'd'})} (a, b, c, d)")
    sizes = dict(QUICK if args.quick else FULL)
    for k in sizes:
        if getattr(args, k) is not None:
            sizes[k] = getattr(args, k)
    if os.geteuid() != 0:
        ap.error("needs root (OVS, namespaces)")
    # SIGTERM ends the run like Ctrl-C does: the labs' finally blocks tear them down
    signal.signal(signal.SIGTERM, _interrupt)

    if args.compare:
        tree = args.compare.resolve()
        if not (tree / "ovs_scripts" / "lab.py").exists():
            ap.error(f"--compare {tree}: not a source tree of this project "
                     f"(git worktree add --detach {tree} b228697)")
        fwd = ["--only", ",".join(sorted(only)), "--reps", str(args.reps)]
        if args.logs:
            fwd += ["--logs", str(args.logs.resolve())]
        for k, v in sizes.items():
            fwd += [f"--{k}", str(v)]
        with tempfile.TemporaryDirectory(prefix="bench-rc-cmp-") as tmp:
            results = {}
            for side, root in (("before", tree), ("after", Path(__file__).resolve().parents[1])):
                out = Path(tmp) / f"{side}.json"
                rc = _wait_child(_child(root, fwd, out))
                if rc != 0 or not out.exists():
                    print(f"{side} run on {root} failed (exit {rc})", file=sys.stderr, flush=True)
                    results[side] = {"tree": str(root), "head": f"run failed, exit {rc}", "sizes": sizes,
                                     "reps": args.reps, "load_before": (0, 0, 0), "load_after": (0, 0, 0),
                                     "scenarios": {}}
                    continue
                results[side] = json.loads(out.read_text())
            report_tree(results["before"])
            report_tree(results["after"])
            report_compare(results["before"], results["after"])
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
        return 0

    if args.logs:
        LOGS.append(args.logs.resolve())
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(ROOT)])
    res = run_tree(only, sizes, args.reps)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if args.tree is None:
        report_tree(res)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("interrupted; " + (f"labs left for `ovslab down`: {_KEEP}" if _KEEP else "the labs were torn down"),
              file=sys.stderr)
        sys.exit(130)
