"""Session stores other than the folder (``scai.sessions``): Redis Streams for several machines."""
