"""What ONNX Runtime itself costs per employee: the service's ONNX export (the model store's `onnx`
custom object, as the runner and the Ray peers load it), with the runner's session options,
timed on batches of real employees. Prints a table: median of `--repeat` runs per batch size.

python -m loadtests.onnx_cost --sizes 1,16,64 --repeat 2000
"""

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Cost:
    rows: int
    runs: int
    run_us: float
    """Median microseconds of one session.run on a batch of `rows` (inputs built beforehand)."""
    feeds_us: float
    """Median microseconds of building that batch's inputs (feeds_from_matrix), as the runner does."""

    @property
    def run_us_per_row(self) -> float:
        return self.run_us / self.rows

    @property
    def total_us_per_row(self) -> float:
        return (self.run_us + self.feeds_us) / self.rows


def median_us(call: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - started)
    return statistics.median(times) / 1000


def measure(session: Any, matrix: np.ndarray, sizes: list[int], repeat: int) -> list[Cost]:
    """The cost of each batch size, on the first rows of `matrix` (`feature_matrix` rows)."""
    from training.onnx_export import feeds_from_matrix

    costs = []
    for size in sizes:
        batch = matrix[np.arange(size) % len(matrix)]
        feeds = feeds_from_matrix(batch)
        for _ in range(min(repeat, 20)):  # warm-up: first runs allocate ONNX Runtime's buffers
            session.run(["probabilities"], feeds)
        run = median_us(lambda f=feeds: session.run(["probabilities"], f), repeat)
        build = median_us(lambda b=batch: feeds_from_matrix(b), repeat)
        costs.append(Cost(rows=size, runs=repeat, run_us=run, feeds_us=build))
    return costs


def render(costs: list[Cost], model_tag: str) -> str:
    lines = [
        f"ONNX Runtime on {model_tag}'s export, one thread (the runner's options), median of "
        f"{costs[0].runs if costs else 0} runs per size",
        "",
        "| rows | us per run | us per row | inputs us per batch | us per row with inputs |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {c.rows} | {c.run_us:.1f} | {c.run_us_per_row:.2f} | {c.feeds_us:.1f} "
        f"| {c.total_us_per_row:.2f} |"
        for c in costs
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.onnx_cost", description=__doc__)
    parser.add_argument("--model-tag", help="default: the service's (ATTRITION_MODEL_TAG)")
    parser.add_argument("--sizes", default="1,16,64", help="batch sizes, in employees")
    parser.add_argument("--repeat", type=int, default=2000, help="timed runs per batch size")
    args = parser.parse_args(argv)
    import bentoml

    from settings import get_settings
    from training.data import load_reference
    from training.onnx_export import session
    from training.schema import FEATURES, Employee, feature_matrix

    model = bentoml.models.get(args.model_tag or get_settings().model_tag)
    export = model.custom_objects.get("onnx")
    if export is None:
        print(f"{model.tag} has no ONNX export", file=sys.stderr)
        return 2
    rows = load_reference()[list(FEATURES)].to_dict("records")
    matrix = feature_matrix([Employee.model_validate(r) for r in rows])
    sizes = [int(s) for s in args.sizes.split(",")]
    print(render(measure(session(export), matrix, sizes, args.repeat), str(model.tag)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
