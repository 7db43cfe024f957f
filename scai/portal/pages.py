"""The human pages: the demo and the API guide. Everything they load is served from ``static/``."""

from __future__ import annotations

from flask import Blueprint, render_template, request

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> str:
    return render_template("index.html", page="demo")


@bp.get("/docs")
def docs() -> str:
    """curl examples that name this very server, so they work when pasted."""
    return render_template("api.html", page="docs", base=request.url_root.rstrip("/"))
