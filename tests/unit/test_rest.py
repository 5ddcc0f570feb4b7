"""REST router: validation errors name the field; OpenAPI lists every route."""

import io
import json

from pydantic import BaseModel, Field

from ryu_apps.framework.rest import ApiError, RestApi


class Member(BaseModel):
    name: str
    port: int = Field(ge=1)


class Body(BaseModel):
    members: list[Member]


def call(api, method, path, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "",
           "CONTENT_LENGTH": str(len(data)), "wsgi.input": io.BytesIO(data)}
    out = {}

    def start(status, headers):
        out["status"] = int(status.split()[0])

    payload = b"".join(api(env, start))
    return out["status"], (json.loads(payload) if payload else None)


def make_api():
    api = RestApi()
    seen = []

    def create(req):
        seen.append(req.body)
        return 201, {"n": len(req.body.members)}

    def get(req):
        if req.params["name"] != "x":
            raise ApiError(404, "no such thing")
        return {"name": "x"}

    api.add("POST", "/v1/things", create, "create", body=Body, status=201)
    api.add("GET", "/v1/things/{name}", get, "get")
    return api, seen


def test_valid_body():
    api, seen = make_api()
    assert call(api, "POST", "/v1/things", {"members": [{"name": "a", "port": 1}]}) == (201, {"n": 1})
    assert len(seen) == 1


def test_invalid_field_named_and_handler_not_called():
    api, seen = make_api()
    status, body = call(api, "POST", "/v1/things", {"members": [{"name": "a", "port": 1}, {"name": "b", "port": 0}]})
    assert status == 422
    assert body["field"] == "members[1].port"
    assert seen == []


def test_malformed_json_and_empty_body():
    api, _ = make_api()
    assert call(api, "POST", "/v1/things", raw=b"{nope")[0] == 400
    assert call(api, "POST", "/v1/things", raw=b"")[0] == 400


def test_404_405():
    api, _ = make_api()
    assert call(api, "GET", "/v1/things/y") == (404, {"error": "no such thing"})
    assert call(api, "GET", "/v1/nothing")[0] == 404
    status, body = call(api, "DELETE", "/v1/things/x")
    assert status == 405 and "GET" in body["error"]


def test_openapi_lists_routes_and_schemas():
    api, _ = make_api()
    status, doc = call(api, "GET", "/v1/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.")
    assert "post" in doc["paths"]["/v1/things"]
    assert "Body" in doc["components"]["schemas"] and "Member" in doc["components"]["schemas"]
