"""Dashboard pages over HTTP: rendering, the token login and its cookie."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from server.deps import TOKEN_COOKIE

PAGES = ["/", "/experiments/new", "/runs/1", "/compare?runs=1,2"]
TOKEN = "correct horse battery staple"


def client(tmp_path: Path, token: str = "") -> TestClient:
    settings = Settings(artifact_dir=tmp_path / "artifacts", api_token=token)
    return TestClient(create_app(settings), base_url="http://127.0.0.1")


@pytest.mark.parametrize("path", PAGES)
def test_page_renders_with_strict_policy(tmp_path: Path, path: str) -> None:
    """Each page renders, allows scripts only from the app, and loads its own."""
    response = client(tmp_path).get(path)
    assert response.status_code == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert '<script type="module" src="/static/' in response.text


def test_assets_are_served_locally(tmp_path: Path) -> None:
    """plotly.js and our scripts come from the app itself, not a CDN."""
    http = client(tmp_path)
    assert http.get("/vendor/plotly.min.js").status_code == 200
    assert http.get("/static/run.js").status_code == 200
    assert "https://" not in http.get("/runs/1").text


def test_without_token_there_is_no_login(tmp_path: Path) -> None:
    """With no token configured, /login sends the browser on to the page."""
    response = client(tmp_path).get("/login?next=/compare", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/compare"


def test_token_page_redirects_to_login(tmp_path: Path) -> None:
    """With a token, a page without the cookie goes to /login, keeping its path."""
    http = client(tmp_path, TOKEN)
    response = http.get("/compare?runs=1,2&x=y", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/compare%3Fruns%3D1,2%26x%3Dy"
    login = http.get(response.headers["location"])
    assert 'data-next="/compare?runs=1,2&amp;x=y"' in login.text


def test_wrong_token_is_refused(tmp_path: Path) -> None:
    """POST /api/login with a wrong token is 401 and sets no cookie."""
    response = client(tmp_path, TOKEN).post("/api/login", json={"token": "nope"})
    assert response.status_code == 401
    assert "set-cookie" not in response.headers


def test_right_token_sets_a_strict_httponly_cookie(tmp_path: Path) -> None:
    """The right token gets an HttpOnly, SameSite=Strict cookie that opens the API."""
    http = client(tmp_path, TOKEN)
    response = http.post("/api/login", json={"token": TOKEN})
    assert response.status_code == 204
    cookie = response.headers["set-cookie"].lower()
    assert TOKEN_COOKIE in cookie and "httponly" in cookie
    assert "samesite=strict" in cookie
    assert http.get("/api/presets").status_code == 200
    assert http.get("/", follow_redirects=False).status_code == 200


def test_login_never_redirects_off_site(tmp_path: Path) -> None:
    """A `next` pointing at another host falls back to the runs page."""
    http = client(tmp_path, TOKEN)
    http.cookies.set(TOKEN_COOKIE, TOKEN)
    for target in ("//evil.example/", "https://x.example/", "/\\x.example", "/\t/x"):
        response = http.get("/login", params={"next": target}, follow_redirects=False)
        assert response.headers["location"] == "/"
