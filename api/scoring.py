"""Where the model runs: the models of the store as they are scored (ModelSet), and the two
placements the Predictor scores through (settings.model_placement): the model service over
BentoML's client (RemoteModel), or this entry worker's own session off the event loop (InlineModel).
"""

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import bentoml
import numpy as np
import pandas as pd

from api.lifecycle import call_with_retry
from api.metrics import runner_batch_histogram
from training.explain import explain_features, explain_session
from training.onnx_export import feeds_from_matrix
from training.onnx_export import session as onnx_session
from training.schema import FEATURES

log = logging.getLogger("attrition.service")


class Scorer:
    """One model of the store as it is scored: ONNX Runtime when it carries a verified export
    (and runner_backend allows), else scikit-learn, and its exact explainer."""

    def __init__(self, ref: Any, tag: str, backend: str) -> None:
        self.tag = tag
        self.pipeline = bentoml.sklearn.load_model(ref)
        onnx_model = ref.custom_objects.get("onnx")
        if backend == "onnx" and onnx_model is None:
            raise RuntimeError(f"{tag} has no verified ONNX export; use runner_backend=sklearn")
        # The export was checked against sklearn on the whole training data (training/onnx_export.py).
        self.onnx = onnx_session(onnx_model) if onnx_model and backend != "sklearn" else None
        log.info("scoring %s with %s", tag, "ONNX Runtime" if self.onnx else "scikit-learn")
        self.explainer = ref.custom_objects.get("explainer")
        verified = ref.info.metadata.get("explanation", {}).get("onnx_verified")
        # The same graph with the preprocessed matrix as a second output (checked at training).
        self.explain_onnx = (
            explain_session(onnx_model) if self.onnx is not None and verified else None
        )

    def proba(self, features: np.ndarray) -> np.ndarray:
        if self.onnx is not None:
            return self.onnx.run(["probabilities"], feeds_from_matrix(features))[0][:, 1]
        frame = pd.DataFrame(features, columns=list(FEATURES)).infer_objects()
        return self.pipeline.predict_proba(frame)[:, 1]

    def explain(self, features: np.ndarray) -> np.ndarray:
        if self.explainer is None:
            raise ValueError(f"{self.tag} has no exact explainer")
        return explain_features(
            self.explainer, features, session=self.explain_onnx, pipeline=self.pipeline
        )


class ModelSet:
    """The pinned model and, when one is named, the challenger: every batch is scored by both
    (the pinned model's column or block first). Synchronous: the model service calls it on its
    worker's event loop, an inline entry worker on its scoring threads."""

    def __init__(self, scorers: list[Scorer]) -> None:
        if len(scorers) == 2 and scorers[1].explainer is None and scorers[0].explainer is not None:
            raise RuntimeError(f"{scorers[1].tag} has no exact explainer; retrain it")
        self.scorers = scorers
        self.batch_sizes = runner_batch_histogram()

    @classmethod
    def load(cls, models: list[tuple[Any, str]], backend: str) -> "ModelSet":
        """From (model ref, tag) pairs, the pinned model's first."""
        return cls([Scorer(ref, tag, backend) for ref, tag in models])

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Probability of attrition for each row of `features` (`feature_matrix(employees)`), in
        order: an (n,) array with one model (what entries of earlier versions read during a
        rollout), (n, 2) with a challenger."""
        if features.ndim != 2 or features.shape[1] != len(FEATURES):
            raise ValueError(f"expected (n, {len(FEATURES)}) features, got {features.shape}")
        self.batch_sizes.observe(len(features))
        scores = [scorer.proba(features) for scorer in self.scorers]
        return scores[0] if len(scores) == 1 else np.column_stack(scores)

    def explain(self, features: np.ndarray) -> np.ndarray:
        """Per row: [probability, base value, the contribution of each of the FEATURES to the
        log-odds] from one run of each model, the pinned model's block first."""
        self.batch_sizes.observe(len(features))
        return np.hstack([scorer.explain(features) for scorer in self.scorers])


class ModelClient(Protocol):
    """What the Predictor scores through, in either placement."""

    async def predict_proba(self, features: np.ndarray) -> np.ndarray: ...

    async def explain(self, features: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


class RemoteModel:
    """The model service (placement `service`), through BentoML's client; a call is retried while
    the connection fails (a keep-alive connection closed under the request, or a model service
    restarting), up to `retry_seconds`. Scoring is pure, so a retry is safe."""

    def __init__(self, client: Callable[[], Any], retry_seconds: float) -> None:
        self.client = client  # BentoML resolves the dependency on first use
        self.retry_seconds = retry_seconds

    async def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return await self._call("predict_proba", features)

    async def explain(self, features: np.ndarray) -> np.ndarray:
        return await self._call("explain", features)

    async def _call(self, api: str, features: np.ndarray) -> np.ndarray:
        answer = await call_with_retry(
            lambda: getattr(self.client().to_async, api)(features),
            budget_seconds=self.retry_seconds,
        )
        return np.asarray(answer, dtype=float)

    def close(self) -> None:
        pass  # BentoML closes its client


class InlineModel:
    """The models in this entry worker (placement `inline`): no model service, no hop. Batches
    (the Coalescer's) are scored on `threads` threads of this worker, off the event loop: ONNX
    Runtime releases the GIL while it runs, so the loop parses and answers meanwhile."""

    def __init__(self, models: ModelSet, threads: int) -> None:
        self.models = models
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="inline-model")

    async def predict_proba(self, features: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.models.predict_proba, features)

    async def explain(self, features: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.models.explain, features)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
