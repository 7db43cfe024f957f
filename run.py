"""WSGI entry point: ``uwsgi --module run:application``; settings come from SCAI_* variables."""

from scai import metrics
from scai.config import Settings
from scai.portal import create_app

settings = Settings.from_env()
metrics.enable(settings)  # before anything records: uwsgi's processes share the metrics folder
application = create_app(settings)
