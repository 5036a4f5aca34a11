"""The FastAPI routes, one module per resource."""
