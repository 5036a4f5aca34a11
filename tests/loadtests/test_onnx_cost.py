"""The ONNX cost tool times the model store's export on each batch size and prints one row each."""

import re

import pytest

from loadtests.onnx_cost import main


def test_prints_a_row_per_batch_size(model_tag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model-tag", model_tag, "--repeat", "3"]) == 0
    out = capsys.readouterr().out
    assert model_tag in out
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", out, re.M)
    assert [int(r[0]) for r in rows] == [1, 16, 64]
    for size, run, per_row, _, with_inputs in rows:
        assert float(run) > 0
        # run is printed to 0.1 us and per_row to 0.01 us: allow both roundings.
        assert float(per_row) == pytest.approx(float(run) / int(size), abs=0.05 / int(size) + 0.006)
        assert float(with_inputs) >= float(per_row)
