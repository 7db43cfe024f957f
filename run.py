"""WSGI entry point: ``uwsgi --module run:application``; settings come from SCAI_* variables."""

from scai.portal import create_app

application = create_app()
