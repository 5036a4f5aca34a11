"""The HTTP layer: schemas, routes, the predictor, batching, middleware and the one gate around BentoML and uvicorn internals."""
