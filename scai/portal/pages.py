"""The human pages: the demo and the API guide. Everything they load is served from ``static/``."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template, request

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> str:
    return render_template("index.html", page="demo")


@bp.get("/docs")
def docs() -> str:
    """curl examples that name this server as ``SCAI_PUBLIC_URL`` says, so they work when pasted;
    without it, a placeholder: never the request's Host header, which any client can forge."""
    public = current_app.extensions["scai"].public_url.rstrip("/")
    return render_template("api.html", page="docs", base=public or f"http://SERVER{request.script_root}", public=public)
