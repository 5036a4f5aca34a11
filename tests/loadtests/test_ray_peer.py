"""The Ray peer scores the flat employee JSON exactly as the service scores validated employees."""

import json

import numpy as np

from loadtests.ray_peer import model_inputs, onnx_feeds
from training import onnx_export
from training.data import load_reference, split_xy
from training.pipeline import build_pipeline
from training.schema import Employee, feature_matrix


def test_peer_and_service_give_the_same_probabilities_on_the_whole_dataset() -> None:
    x, y = split_xy(load_reference())
    model = onnx_export.export(build_pipeline("logistic_regression", seed=0).fit(x, y), x).model
    assert model is not None
    session = onnx_export.session(model)
    rows = x.to_dict("records")
    employees = [Employee.model_validate(r) for r in rows]
    service = session.run(
        ["probabilities"], onnx_export.feeds_from_matrix(feature_matrix(employees))
    )[0][:, 1]
    # What the peer gets: the bench's request bodies, parsed from JSON, never validated.
    bodies = [json.loads(json.dumps(r)) for r in rows]
    peer = session.run(["probabilities"], onnx_feeds(model_inputs(session), bodies))[0][:, 1]
    assert len(peer) == len(rows)
    np.testing.assert_array_equal(peer, service)
