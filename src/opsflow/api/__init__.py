"""The thin HTTP API: start, signal, update, query and cancel runbooks; read runs and audit.

``opsflow.api.app.create_app(settings)`` builds the FastAPI app; ``python -m opsflow.api`` (or
``opsflow api``) serves it with uvicorn.
"""
