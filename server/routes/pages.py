"""Dashboard pages (Jinja2 templates in frontend/), their static files and login.

The pages are thin shells: each loads its script, which reads the JSON API and
its event streams. With an API token set, a page asks for the token once
(/login) and keeps it in an HttpOnly cookie that the API and streams accept.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import plotly
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from server.deps import TOKEN_COOKIE, SettingsDep, token_ok

FRONTEND = Path(__file__).resolve().parents[2] / "frontend"
PLOTLY_DIR = Path(plotly.__file__).parent / "package_data"

# Scripts only from this app; Plotly sets inline styles and draws images
# from data: URLs, so those two stay allowed.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
COOKIE_DAYS = 30

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=FRONTEND / "templates")


def mount_static(app: FastAPI) -> None:
    """Our CSS/JS, and plotly.js from the installed package (no CDN)."""
    app.mount("/static", StaticFiles(directory=FRONTEND / "static"), name="static")
    app.mount("/vendor", StaticFiles(directory=PLOTLY_DIR), name="vendor")


def render(request: Request, template: str, **context: object) -> Response:
    response = templates.TemplateResponse(request, template, context)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def page(request: Request, template: str, **context: object) -> Response:
    """A rendered page, or a redirect to /login when the token is missing."""
    if not token_ok(request, request.app.state.settings):
        query = f"?{request.url.query}" if request.url.query else ""
        target = quote(request.url.path + query, safe="/,")
        return RedirectResponse(f"/login?next={target}", status_code=303)
    return render(request, template, **context)


@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request) -> Response:
    return page(request, "runs.html", title="Runs")


@router.get("/experiments/new", response_class=HTMLResponse)
def new_experiment_page(request: Request) -> Response:
    return page(request, "experiment_new.html", title="New experiment")


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: int) -> Response:
    return page(request, "run.html", title=f"Run {run_id}", run_id=run_id)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request) -> Response:
    return page(request, "compare.html", title="Compare runs")


@router.get("/login", response_class=HTMLResponse)
def login_page(
    request: Request,
    settings: SettingsDep,
    next_: Annotated[str, Query(alias="next", max_length=2000)] = "/",
) -> Response:
    """Ask for the API token once; without a token there is nothing to ask."""
    target = next_ if _is_local_path(next_) else "/"
    if not settings.api_token or token_ok(request, settings):
        return RedirectResponse(target, status_code=303)
    return render(request, "login.html", title="Sign in", next=target)


def _is_local_path(path: str) -> bool:
    # "//host", "/\host" and "/<tab>/host" (browsers drop tabs and newlines)
    # are other sites to a browser: never redirect there.
    return (
        path.startswith("/")
        and not path.startswith(("//", "/\\"))
        and path.isprintable()
    )


class Login(BaseModel):
    token: str = Field(max_length=1000)


@router.post("/api/login", status_code=204)
def login(body: Login, request: Request, settings: SettingsDep) -> Response:
    """Check the token and keep it in an HttpOnly cookie for pages and streams."""
    if not settings.api_token:
        return Response(status_code=204)  # no token configured: nothing to check
    if not hmac.compare_digest(body.token.encode(), settings.api_token.encode()):
        raise HTTPException(401, "wrong API token: it is the VSML_API_TOKEN value")
    response = Response(status_code=204)
    response.set_cookie(
        TOKEN_COOKIE, body.token, max_age=COOKIE_DAYS * 24 * 3600,
        httponly=True, samesite="strict", path="/",
        secure=request.url.scheme == "https",
    )  # fmt: skip
    return response
