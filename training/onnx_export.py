"""Export a fitted pipeline to ONNX and keep it only if it scores like sklearn."""

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from training.schema import FEATURES, NUMERIC

if TYPE_CHECKING:
    # Only a type here: importing scikit-learn (and SciPy) was a large share of every serving
    # process's start, which serves with ONNX (docs/adr/0019-no-scikit-learn-when-serving.md).
    from sklearn.pipeline import Pipeline

log = logging.getLogger("attrition.onnx")
TOLERANCE = 1e-6  # largest |p_onnx - p_sklearn| accepted on the whole dataset


@dataclass(frozen=True)
class OnnxExport:
    model: bytes | None
    max_abs_diff: float | None
    note: str


def feeds(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """ONNX inputs of a DataFrame's rows (the export check)."""
    return feeds_from_matrix(frame[list(FEATURES)].to_numpy(dtype=object))


def feeds_from_matrix(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX inputs: one (n, 1) column per feature, float64 numbers and object strings, from an
    (n, len(FEATURES)) object matrix in FEATURES order (`training.schema.feature_matrix`)."""
    return {
        c: matrix[:, j : j + 1].astype(np.float64 if c in NUMERIC else object)
        for j, c in enumerate(FEATURES)
    }


def session(model: bytes):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # batches are small; threads would fight the entry service
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def probabilities(sess, frame: pd.DataFrame) -> np.ndarray:  # type: ignore[no-untyped-def]
    return sess.run(["probabilities"], feeds(frame))[0][:, 1]


def export(pipeline: "Pipeline", check_on: pd.DataFrame) -> OnnxExport:
    """Convert with skl2onnx (float64 inputs) and compare with predict_proba on `check_on`."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType

    types = [
        (c, DoubleTensorType([None, 1]) if c in NUMERIC else StringTensorType([None, 1]))
        for c in FEATURES
    ]
    classifier = pipeline.steps[-1][1]
    try:
        onx = convert_sklearn(
            pipeline,
            initial_types=types,
            options={id(classifier): {"zipmap": False}},
            target_opset=17,
        )
        model = onx.SerializeToString()
        got = probabilities(session(model), check_on[list(FEATURES)])
    except Exception as exc:  # noqa: BLE001 - any converter gap: serve with sklearn instead
        log.warning("ONNX export failed (%s); the runner will use scikit-learn", exc)
        return OnnxExport(None, None, f"export failed: {exc}")
    diff = float(np.max(np.abs(got - pipeline.predict_proba(check_on[list(FEATURES)])[:, 1])))
    if diff > TOLERANCE:
        return OnnxExport(None, diff, f"dropped: max |diff| {diff:.2e} > {TOLERANCE:.0e}")
    return OnnxExport(model, diff, f"kept: max |diff| {diff:.2e} <= {TOLERANCE:.0e}")
