"""REST hardening at the WSGI level: bearer tokens, body limits, 405 Allow, OpenAPI truth.

The server itself (sockets, TLS, idle connections) is tested against a real
controller in tests/integration/test_rest_hardening.py.
"""

import io
import json
import logging

import pytest
from pydantic import BaseModel, ConfigDict

from ryu_apps.framework import rest
from ryu_apps.framework.rest import (
    PerParam,
    RestApi,
    RestConfigError,
    RestSecurity,
    is_loopback,
)

TOKEN = "t0ken-" + "x" * 26


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = 0


class Other(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "a"


def call(api, method, path, body=None, raw=None, headers=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "",
           "CONTENT_LENGTH": str(len(data)), "wsgi.input": io.BytesIO(data)}
    for k, v in (headers or {}).items():
        env["HTTP_" + k.upper().replace("-", "_")] = v
    out = {}

    def start(status, hdrs):
        out["status"], out["headers"] = int(status.split()[0]), dict(hdrs)

    payload = b"".join(api(env, start))
    return out["status"], (json.loads(payload) if payload else None), out["headers"]


def make_api(security=None):
    api = RestApi(security=security)
    seen = []
    api.add("GET", "/v1/things", lambda r: ["a"], "list")
    api.add("POST", "/v1/things", lambda r: seen.append(r.body) or (201, {"ok": True}), "create",
            body="json", status=201)
    api.add("POST", "/v1/things/{name}/poke", lambda r: (202, {}), "poke", status=202)
    models = {"strict": Strict, "other": Other}
    api.add("PUT", "/v1/kinds/{kind}", lambda r: (202, {}) if r.body is None else r.body.model_dump(), "put",
            body=PerParam("kind", lambda: models), also=(202,))
    return api, seen


BEARER = {"Authorization": f"Bearer {TOKEN}"}


# -- authentication ------------------------------------------------------------------


@pytest.mark.parametrize("headers,names", [
    ({}, "no Authorization header"),
    ({"Authorization": "   "}, "no Authorization header"),
    ({"Authorization": f"Basic {TOKEN}"}, "Authorization scheme 'Basic' is not accepted"),
    ({"Authorization": "Bearer not-the-token"}, "wrong token"),
    ({"Authorization": "Bearer"}, "no token after 'Authorization: Bearer'"),
    ({"Authorization": f"Bearer {TOKEN}x"}, "wrong token"),
])
def test_write_without_the_right_token_is_401_naming_what_is_missing(headers, names):
    api, seen = make_api(RestSecurity(token=TOKEN))
    status, body, hdrs = call(api, "POST", "/v1/things", {"a": 1}, headers=headers)
    assert status == 401, body
    assert names in body["error"]
    assert hdrs["WWW-Authenticate"].startswith('Bearer realm="fabric"')
    assert seen == []  # the handler never ran


def test_write_with_the_token_passes_reads_on_loopback_stay_open():
    api, seen = make_api(RestSecurity(token=TOKEN))
    assert call(api, "POST", "/v1/things", {"a": 1}, headers=BEARER)[:2] == (201, {"ok": True})
    assert seen == [{"a": 1}]
    assert call(api, "GET", "/v1/things")[:2] == (200, ["a"])
    # a 405 or 404 for writes is only told to those holding the token
    assert call(api, "DELETE", "/v1/things")[0] == 401


def test_beyond_loopback_reads_need_the_token_too():
    api, _ = make_api(RestSecurity(host="0.0.0.0", token=TOKEN))
    status, body, hdrs = call(api, "GET", "/v1/things")
    assert status == 401 and "reads and writes need" in body["error"]
    assert call(api, "GET", "/v1/things", headers=BEARER)[:2] == (200, ["a"])


def test_no_token_configured_means_open_on_loopback():
    api, _ = make_api()
    assert call(api, "POST", "/v1/things", {"a": 1})[0] == 201


@pytest.mark.parametrize("host,expect", [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
                                         ("localhost", True), ("0.0.0.0", False), ("::", False), ("", False),
                                         ("10.0.0.1", False), ("ctl.example", False)])
def test_is_loopback(host, expect):
    assert is_loopback(host) is expect


def test_load_refuses_non_loopback_without_token():
    with pytest.raises(RestConfigError, match="rest-host 0.0.0.0 is not a loopback address.*rest-token-file"):
        RestSecurity.load("0.0.0.0")
    assert RestSecurity.load("127.0.0.1").token is None


def test_load_token_file(tmp_path):
    good = tmp_path / "tok"
    good.write_text(TOKEN + "\n")
    good.chmod(0o600)
    sec = RestSecurity.load("0.0.0.0", str(good))
    assert sec.token == TOKEN and not sec.reads_open
    for text, match in (("", "holds nothing"), ("short\n", "has 5 characters; at least 16"),
                        ("a" * 20 + " " + "b" * 20, "several words")):
        bad = tmp_path / "bad"
        bad.write_text(text)
        with pytest.raises(RestConfigError, match=f"rest-token-file {bad}: .*{match}"):
            RestSecurity.load("127.0.0.1", str(bad))
    with pytest.raises(RestConfigError, match="rest-token-file /nonexistent/tok: cannot read it"):
        RestSecurity.load("127.0.0.1", "/nonexistent/tok")


def test_load_cert_needs_key_and_a_real_certificate(tmp_path):
    with pytest.raises(RestConfigError, match="rest-key is missing"):
        RestSecurity.load("127.0.0.1", cert=str(tmp_path / "c.pem"))
    with pytest.raises(RestConfigError, match="rest-cert is missing"):
        RestSecurity.load("127.0.0.1", key=str(tmp_path / "k.pem"))
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    with pytest.raises(RestConfigError, match="not a usable certificate and key"):
        RestSecurity.load("127.0.0.1", cert=str(tmp_path / "c.pem"), key=str(tmp_path / "k.pem"))


# -- body limits ---------------------------------------------------------------------


@pytest.mark.parametrize("raw,names", [
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 32 levels"),
    (b'{"a":' * 33 + b"1" + b"}" * 33, "nested deeper than 32 levels"),
    (b'{"n": ' + b"9" * 5000 + b"}", "integer of 5000 digits; at most 100"),
    (b'{"n": -' + b"9" * 101 + b"}", "integer of 101 digits"),
    (b'{"n": 1' + b"0" * 400 + b".5}", "number out of range"),
    (b'{"n": NaN}', "NaN, which is not JSON"),
    (b'{"n": -Infinity}', "-Infinity, which is not JSON"),
    (b'{"n": ', "not valid JSON"),
])
def test_bodies_beyond_the_limits_are_400_naming_the_problem(raw, names):
    api, seen = make_api()
    status, body, _ = call(api, "POST", "/v1/things", raw=raw)
    assert status == 400, body
    assert names in body["error"]
    assert seen == []


def test_bodies_at_the_limits_pass():
    api, seen = make_api()
    assert call(api, "POST", "/v1/things", raw=b'{"a":' * 31 + b"[1]" + b"}" * 31)[0] == 201
    assert call(api, "POST", "/v1/things", raw=b'{"n": ' + b"9" * 100 + b"}")[0] == 201
    assert seen[-1] == {"n": int("9" * 100)}


# -- 405, statuses, OpenAPI ----------------------------------------------------------


def test_405_carries_allow():
    api, _ = make_api()
    status, body, hdrs = call(api, "DELETE", "/v1/things")
    assert status == 405 and hdrs["Allow"] == "GET, POST"
    assert "use GET, POST" in body["error"]


def test_per_param_body_validates_with_that_params_model():
    api, _ = make_api()
    assert call(api, "PUT", "/v1/kinds/strict", {"n": 3})[:2] == (200, {"n": 3})
    status, body, _ = call(api, "PUT", "/v1/kinds/strict", {"n": 3, "extra": 1})
    assert status == 422 and body["field"] == "extra"
    assert call(api, "PUT", "/v1/kinds/other", {"name": "b"})[:2] == (200, {"name": "b"})
    assert call(api, "PUT", "/v1/kinds/other", {"n": 3})[0] == 422


def test_openapi_declares_what_handlers_answer():
    api, _ = make_api(RestSecurity(token=TOKEN))
    doc = api.openapi()
    poke = doc["paths"]["/v1/things/{name}/poke"]["post"]
    assert "202" in poke["responses"] and "200" not in poke["responses"]
    assert poke["security"] == [{"bearer": []}] and "401" in poke["responses"]
    assert "security" not in doc["paths"]["/v1/things"]["get"]  # reads open on loopback
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    # one concrete path per parameter value, with that model's exact schema
    assert "/v1/kinds/{kind}" not in doc["paths"]
    for kind, model in (("strict", "Strict"), ("other", "Other")):
        op = doc["paths"][f"/v1/kinds/{kind}"]["put"]
        assert set(op["responses"]) >= {"200", "202"}
        assert op["requestBody"]["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
        assert doc["components"]["schemas"][model]["additionalProperties"] is False


def test_openapi_without_token_has_no_security():
    api, _ = make_api()
    doc = api.openapi()
    assert "securitySchemes" not in doc["components"]
    assert "security" not in doc["paths"]["/v1/things"]["post"]


def test_undeclared_status_is_logged(caplog):
    api = RestApi()
    api.add("POST", "/v1/x", lambda r: (202, {}), "declares 200, answers 202")
    with caplog.at_level(logging.ERROR, logger=rest.__name__):
        assert call(api, "POST", "/v1/x")[0] == 202
    assert "answered 202, which its route does not declare" in caplog.text



def test_bodies_are_validated_strictly_as_the_schema_says():
    """pydantic's lax mode would take "true" or true for a number: the schema says number, so 422."""
    api, _ = make_api()
    for bad in ({"n": True}, {"n": "3"}, {"n": 1.5}):
        status, body, _ = call(api, "PUT", "/v1/kinds/strict", bad)
        assert status == 422 and body["field"] == "n", (bad, body)
    assert call(api, "PUT", "/v1/kinds/strict", {"n": 3})[0] == 200


def test_param_values_become_enums():
    api, _ = make_api()
    api.param_values("/v1/things/{name}", lambda: ["a", "b"])
    api.add("GET", "/v1/other/{name}", lambda r: {}, "other")
    doc = api.openapi()
    poke = doc["paths"]["/v1/things/{name}/poke"]["post"]["parameters"][0]
    assert poke["schema"] == {"type": "string", "enum": ["a", "b"]}
    assert doc["paths"]["/v1/other/{name}"]["get"]["parameters"][0]["schema"] == {"type": "string"}


def test_ovslab_options():
    from ovs_scripts import cli

    parser = cli.build_parser()
    assert parser.parse_args(["up", "t.yaml", "--rest-token"]).rest_token is True
    assert parser.parse_args(["up", "t.yaml"]).rest_token is False
    ns = parser.parse_args(["flows", "s1", "--rest-token-file", "/tmp/t", "--rest-cacert", "/tmp/ca.pem"])
    assert (ns.rest_token_file, ns.rest_cacert) == ("/tmp/t", "/tmp/ca.pem")
