"""The REST API frontend (FastAPI): parse a request, call the engine, answer JSON."""
