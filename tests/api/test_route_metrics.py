"""Metric labels by route (api/route_metrics.py): every route of the FastAPI app, its included
routers' too, templated routes as their template, anything else as one label."""

import pytest

from api import internals
from api.app import create_app


def test_every_route_of_the_app_has_its_label(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(internals, "_gate", internals.Gate(True, "test"))
    from api.route_metrics import UNMATCHED, RouteLabels

    labels = RouteLabels([create_app()])
    for path in ("/health", "/model", "/model/card", "/auth/token", "/predict/history",
                 "/outcomes", "/monitoring/latest", "/metrics", "/readyz"):  # fmt: skip
        assert labels(path) == path
    assert labels("/predict/history/6f1c0d2e") == "/predict/history/{inference_id}"
    assert labels("/static_content/index.css") == "/static_content/{path}"
    assert labels("/wp-admin") == UNMATCHED
