"""One kit for the lab tools, the demo and the tests: waiting, the controller's REST API, ping.

Standard library only, so anything in ``ovs_scripts``, ``bench`` or ``tests`` may use it::

    from ovs_scripts import kit

    kit.wait_for(lambda: lab_is_ready(), timeout=10)          # True, or False after ~10 s

    r = kit.rest(lab, "PUT", "/v1/apps/fabric/intent", {"ecmp": False})
    r.status, r.body                                          # 422, {"error": ..., "field": "ecmp"}
    kit.rest(lab, "GET", "/v1/switches").expect(200)          # the body, or RestError
    kit.request("GET", "https://127.0.0.1:8443/v1/health", cafile="ca.pem")   # any URL

    res = kit.ping(lab, "h1", "10.1.0.3", count=3)            # PingResult; true when ping exited 0
    res.sent, res.received, res.loss, res.stats.rtt_avg
    kit.parse_ping(text)                                      # PingStats of any ping output, or None

REST: :func:`request` sends one request and returns a :class:`Reply` for every
HTTP answer, errors (4xx/5xx) included; only a failure to get an answer at all
(refused, unreachable, timed out, TLS refused) raises, as urllib's own
``URLError``/``OSError``.  A body given as Python data is sent as JSON.
:func:`rest` is the same against a lab's controller, with the lab's token
headers (``Authorization: Bearer`` when the lab was brought up with a token).

Ping: :func:`ping_argv` builds an iputils ``ping`` command line, :func:`ping`
runs it in a lab host's namespace, :func:`parse_ping` reads the summary lines
(``3 packets transmitted, 3 received, 0% packet loss`` and ``rtt min/avg/max/mdev
= ...``; busybox's ``packets received`` / ``round-trip`` spelling too).
"""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any

__all__ = [
    "wait_for",
    "Reply", "RestError", "request", "rest",
    "PingStats", "PingResult", "parse_ping", "ping_argv", "ping",
]

# ---------------------------------------------------------------------------------------
# Waiting.


def wait_for(pred: Callable[[], Any], timeout: float, step: float = 0.05,
             ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """Call ``pred`` every ``step`` seconds until it returns something true, and return that
    (so ``peers = wait_for(lambda: get(...)["peers"], 5)`` keeps the answer); False when
    ``timeout`` passed first.

    ``pred`` is called at least once, and once more after the deadline, so a
    condition that became true during the last sleep is still seen.  Exceptions
    from ``pred`` propagate, except those in ``ignore`` (a REST server still
    starting: ``ignore=(OSError,)``), which count as not yet.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = pred()
        except ignore:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


# ---------------------------------------------------------------------------------------
# The controller's REST API.


class RestError(RuntimeError):
    """An answer other than the one expected (:meth:`Reply.expect`)."""

    def __init__(self, reply: "Reply", expected: tuple[int, ...]):
        self.reply = reply
        self.status = reply.status
        why = reply.error
        super().__init__(f"HTTP {reply.status} for {reply.method} {reply.url} (expected "
                         f"{' or '.join(map(str, expected))})" + (f": {why}" if why else ""))

    @property
    def body(self) -> Any:
        """The answer's JSON body ({} when empty or not JSON): ``err.body["error"]``."""
        try:
            return self.reply.body or {}
        except ValueError:
            return {}


@dataclass(frozen=True)
class Reply:
    """One HTTP answer.  ``body`` is the JSON of ``data`` (None when empty; ValueError when not JSON)."""

    status: int
    data: bytes
    headers: Message
    url: str
    method: str = "GET"

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def body(self) -> Any:
        return json.loads(self.data) if self.data else None

    @property
    def error(self) -> str | None:
        """The ``error`` member of a JSON object body (the controller's error message), else None."""
        try:
            body = self.body
        except ValueError:
            return None
        return str(body["error"]) if isinstance(body, dict) and "error" in body else None

    def expect(self, *statuses: int) -> Any:
        """The body when the status is one of ``statuses`` (default 200), else :class:`RestError`."""
        statuses = statuses or (200,)
        if self.status not in statuses:
            raise RestError(self, statuses)
        return self.body

    def __iter__(self):
        """``status, body = reply``."""
        return iter((self.status, self.body))


def request(method: str, url: str, body: Any = None, *, raw: bytes | None = None,
            headers: Mapping[str, str] | None = None, timeout: float = 10,
            context: ssl.SSLContext | None = None, cafile: str | None = None) -> Reply:
    """Send one request; the :class:`Reply`, HTTP errors included.

    ``body`` (any JSON-able data) is sent as JSON, ``raw`` as the bytes given;
    either gets ``Content-Type: application/json`` unless ``headers`` says
    otherwise.  ``context`` (or ``cafile``, to verify an https:// server with
    that CA) is used for https:// URLs.  No answer at all raises urllib's
    ``URLError`` / ``OSError`` (``TimeoutError`` for a read timing out).
    """
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method.upper(), headers=dict(headers or {}))
    if data is not None and not req.has_header("Content-type"):
        req.add_header("Content-Type", "application/json")
    if context is None and cafile and url.startswith("https:"):
        context = ssl.create_default_context(cafile=cafile)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return Reply(resp.status, resp.read(), resp.headers, url, req.get_method())
    except urllib.error.HTTPError as exc:
        try:
            payload = exc.read()
        except OSError:
            payload = b""
        return Reply(exc.code, payload or b"", exc.headers, url, req.get_method())


def rest(lab, method: str, path: str, body: Any = None, **kw: Any) -> Reply:
    """:func:`request` to ``path`` of a lab's controller (``lab.rest_url``) with the lab's token headers.

    ``lab`` is an :class:`ovs_scripts.lab.Lab` or anything with ``rest_url`` and
    ``rest_headers()``; extra ``headers`` are added to (and override) the lab's.
    """
    headers = {**lab.rest_headers(), **dict(kw.pop("headers", None) or {})}
    return request(method, f"{lab.rest_url}{path}", body, headers=headers, **kw)


# ---------------------------------------------------------------------------------------
# Ping.

_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received(?:, \+(\d+) errors)?")
_RTT = re.compile(r"(?:rtt|round-trip) min/avg/max(?:/(?:mdev|stddev))? = ([\d.]+)/([\d.]+)/([\d.]+)(?:/([\d.]+))? ms")


@dataclass(frozen=True)
class PingStats:
    """The summary of one ping run; round-trip times in milliseconds (None when nothing came back)."""

    transmitted: int
    received: int
    errors: int = 0
    rtt_min: float | None = None
    rtt_avg: float | None = None
    rtt_max: float | None = None
    rtt_mdev: float | None = None

    @property
    def lost(self) -> int:
        return self.transmitted - self.received

    @property
    def loss(self) -> float:
        """Fraction of the packets sent that got no answer (1.0 when nothing was sent)."""
        return self.lost / self.transmitted if self.transmitted else 1.0


def parse_ping(text: str) -> PingStats | None:
    """The :class:`PingStats` of a ping's output (its last summary), None if it printed none."""
    found = _SUMMARY.findall(text or "")
    if not found:
        return None
    sent, got, errors = found[-1]
    rtts = _RTT.findall(text)
    rtt = [float(v) if v else None for v in rtts[-1]] if rtts else [None] * 4
    return PingStats(int(sent), int(got), int(errors or 0), *rtt)


def ping_argv(addr: str, count: int = 2, *, interval: float = 0.2, wait: float = 1, quiet: bool = False,
              source: str | None = None, deadline: float | None = None, family: int | None = None) -> list[str]:
    """``ping [-4|-6] -n [-q] -c count -i interval -W wait [-I source] [-w deadline] addr``.

    iputils picks IPv4 or IPv6 from ``addr``; ``family`` (4 or 6) forces one.
    """
    if family not in (None, 4, 6):
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    argv = ["ping", *([f"-{family}"] if family else []), "-n", *(["-q"] if quiet else []),
            "-c", str(count), "-i", str(interval), "-W", str(wait)]
    if source:
        argv += ["-I", source]
    if deadline is not None:
        argv += ["-w", str(int(deadline))]
    return argv + [addr]


@dataclass(frozen=True)
class PingResult:
    """One ping run: true when ping exited 0 (for iputils with ``-c``: at least one answer)."""

    returncode: int
    output: str
    stats: PingStats | None
    count: int = 0  # packets asked for: ``sent`` when ping printed no summary

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def __bool__(self) -> bool:
        return self.ok

    @property
    def sent(self) -> int:
        return self.stats.transmitted if self.stats else self.count

    @property
    def received(self) -> int:
        return self.stats.received if self.stats else 0

    @property
    def loss(self) -> float:
        return self.stats.loss if self.stats else 1.0


def ping(lab, host: str, addr: str, count: int = 2, *, interval: float = 0.2, wait: float = 1,
         quiet: bool = False, source: str | None = None, family: int | None = None,
         timeout: float | None = 60) -> PingResult:
    """Ping ``addr`` from ``host``'s namespace (``lab.exec``); never raises for a failed ping."""
    argv = ping_argv(addr, count, interval=interval, wait=wait, quiet=quiet, source=source, family=family)
    r = lab.exec(host, argv, check=False, timeout=timeout)
    return PingResult(r.returncode, r.stdout or "", parse_ping(r.stdout or ""), count)
