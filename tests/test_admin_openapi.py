"""The admin API's OpenAPI 3.1 document (GET /openapi.json) stays true: every route
served is documented and every documented operation is served, and schemathesis,
run against a live edge with the document, finds no 500 and no answer that breaks it."""

import json
import subprocess
import sys
import types

import pytest

from support import Upstream  # noqa: F401 (the fixtures' servers)
from test_admin_api import AUTH, CONF, TOKEN, start
from test_control import admin, try_status, wait_for

pytestmark = pytest.mark.edge_only


def served_routes():
    """(METHOD, path pattern) of every route of the admin listener, from its table."""
    from edge.control.admin import AdminServer
    from edge.control.services import Context
    server = AdminServer(Context(None, None, 0), types.SimpleNamespace(admin=None))
    return {(r.method, r.pattern) for r in server.routes}


def documented_routes(document):
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


def test_every_route_served_is_documented_and_every_documented_one_served():
    from edge.control.openapi import DOCUMENT
    served = served_routes()
    documented = documented_routes(DOCUMENT)
    assert served == documented, (f"served, not documented: {served - documented}; "
                                  f"documented, not served: {documented - served}")
    assert DOCUMENT["openapi"].startswith("3.1.")
    # every schema reference resolves, every operation answers 401/403 as documented
    text = json.dumps(DOCUMENT)
    for name in DOCUMENT["components"]["schemas"]:
        assert f"#/components/schemas/{name}" in text or name == "Error"
    import re
    for ref in re.findall(r'"\$ref": "#/components/schemas/([A-Za-z]+)"', text):
        assert ref in DOCUMENT["components"]["schemas"], ref
    for path, item in DOCUMENT["paths"].items():
        for method, op in item.items():
            assert {"200", "401", "403"} <= set(op["responses"]), (method, path)
            assert op.get("operationId"), (method, path)


def test_the_live_document_matches_the_routes_a_running_edge_answers(edge, tmp_path, upstream_factory):
    e = start(edge, tmp_path, (upstream_factory("one"), upstream_factory("two")))
    code, hdrs, body = admin(e.admin_port, "/openapi.json")
    assert code == 200 and hdrs["content-type"] == "application/json"
    from edge.control.openapi import DOCUMENT
    document = json.loads(body)
    assert document == json.loads(json.dumps(DOCUMENT))
    # each documented path is there (not 404) for its method, and refuses the others (405)
    examples = {"{name}": "api"}
    for path, item in document["paths"].items():
        concrete = path.replace("{name}", examples["{name}"])
        if path.startswith("/consumers/"):
            concrete = "/consumers/alice"
        for method in ("GET", "POST", "PUT", "DELETE"):
            if method in ("POST",) and method.lower() not in item:
                code = admin(e.admin_port, concrete, method)[0]
                assert code == 405, (method, path, code)
            elif method.lower() in item and method == "GET":
                code = admin(e.admin_port, concrete, method)[0]
                assert code == 200, (method, path, code)
    for path in ("/nope", "/upstreams/api/peers", "/status/x", "/config/"):
        assert admin(e.admin_port, path)[0] == 404, path


@pytest.mark.timeout(300)
def test_schemathesis_finds_no_server_error_and_no_answer_off_the_schema(edge, tmp_path, upstream_factory):
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN)
    # the managed files are included, so the writes schemathesis makes can succeed
    # (a throwaway config: it may add, change and delete upstreams, routes, consumers)
    conf = CONF.replace("admin_listen 127.0.0.1:@PORT2@;",
                        f"admin_listen 127.0.0.1:@PORT2@; admin_token_file {token_file};"
                        f" include conf.d/_admin/*.conf;")
    conf = conf.replace("server_name api.test;",
                        "server_name api.test; include conf.d/_admin/routes/api.test/*.conf;")
    assert conf.count("conf.d/_admin") == 2
    e = start(edge, tmp_path, (upstream_factory("one"), upstream_factory("two")), conf,
              headers=AUTH)
    report = tmp_path / "schemathesis-junit.xml"
    r = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run",
         f"http://127.0.0.1:{e.admin_port}/openapi.json",
         "--header", f"Authorization: Bearer {TOKEN}",
         "--checks", "all",
         # positive_data_acceptance expects any generated string to name something;
         # ignored_auth: the document makes the token optional (it is a config choice)
         "--exclude-checks", "positive_data_acceptance,ignored_auth",
         "--max-examples", "25", "--seed", "1", "--workers", "1",
         "--generation-database", "none", "--no-color",
         "--report", "junit", "--report-junit-path", str(report),
         "--request-timeout", "70"],
        cwd=tmp_path, capture_output=True, text=True, timeout=280)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "passed" in out and "failed" not in out.split("SUMMARY")[-1].lower(), out[-3000:]
    junit = report.read_text()
    assert 'failures="0"' in junit and 'errors="0"' in junit, junit[:2000]
    # everything schemathesis sent left the node serving and not draining by accident
    assert admin(e.admin_port, "/undrain", "POST", AUTH)[0] == 200
    wait_for(lambda: (try_status(e.admin_port, AUTH) or {}).get("ready"), 10, "ready", e)
    assert "admin listener:" not in e.error_log, "no handler error logged"
