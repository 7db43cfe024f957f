"""``/openapi.json`` stays true: it validates as OpenAPI 3.1, names every route Flask serves with
its methods (and nothing Flask does not serve), and secures exactly the views that need an API key."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from scai.portal import create_app

IGNORED_METHODS = {"HEAD", "OPTIONS"}


def served_routes(app) -> dict[str, set[str]]:
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        routes.setdefault(path, set()).update(m.lower() for m in rule.methods - IGNORED_METHODS)
    return routes


def test_the_document_validates_and_covers_every_route(client) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json
    validate(document)
    documented = {path: set(operations) for path, operations in document["paths"].items()}
    assert documented == served_routes(client.application)


def test_exactly_the_keyed_views_are_secured(client) -> None:
    app = client.application
    document = client.get("/openapi.json").json
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        keyed = getattr(app.view_functions[rule.endpoint], "api_key_required", False)
        for method in rule.methods - IGNORED_METHODS:
            security = document["paths"][path][method.lower()].get("security", [])
            assert ({"bearer": []} in security) == keyed, f"{method} {path}"


def test_docs_links_it_and_a_sub_path_is_its_server(settings) -> None:
    client = create_app(settings).test_client()
    assert 'href="openapi.json"' in client.get("/docs").text or "/openapi.json" in client.get("/docs").text
    mounted = client.get("/openapi.json", environ_overrides={"SCRIPT_NAME": "/scai"}).json
    assert mounted["servers"] == [{"url": "/scai"}]
