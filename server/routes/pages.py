"""Dashboard pages (Jinja2 templates in frontend/) and their static files."""

from __future__ import annotations

from pathlib import Path

import plotly
from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

FRONTEND = Path(__file__).resolve().parents[2] / "frontend"
PLOTLY_DIR = Path(plotly.__file__).parent / "package_data"

router = APIRouter(include_in_schema=False)


def mount_static(app: FastAPI) -> None:
    """Our CSS/JS, and plotly.js from the installed package (no CDN)."""
    app.mount("/static", StaticFiles(directory=FRONTEND / "static"), name="static")
    app.mount("/vendor", StaticFiles(directory=PLOTLY_DIR), name="vendor")
