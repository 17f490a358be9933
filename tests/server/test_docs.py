"""The OpenAPI page works without the internet."""

import re

from fastapi.testclient import TestClient


def test_docs_page_loads_only_local_assets(client: TestClient):
    """/docs links Swagger UI's files from this app, never from a CDN."""
    page = client.get("/docs")
    assert page.status_code == 200
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert links and all(link.startswith("/docs-assets/") for link in links)
    for link in links:
        assert client.get(link).status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "VSML Lab"
