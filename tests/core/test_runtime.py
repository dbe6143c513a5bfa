"""ONNX Runtime sessions as the batcher calls them: the native run and its error mapping."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import modelzoo
from modelgate.gateway.core.errors import ErrorCode, InferenceError
from modelgate.gateway.core.runtime import OnnxModel, _direct_run
from modelgate.gateway.settings import RuntimeSettings


def test_the_native_run_answers_like_the_public_one() -> None:
    artifact = modelzoo.classifier()
    model = OnnxModel(artifact, RuntimeSettings())
    x = np.random.default_rng(3).normal(size=(5, modelzoo.FEATURES)).astype(np.float32)

    public = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    expected = public.run(model.output_names, {"input": x})
    got = model.run({"input": x})

    assert len(got) == len(expected) == len(model.outputs)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_value_the_model_rejects_fails_the_run_as_invalid() -> None:
    model = OnnxModel(modelzoo.lookup(rows=10), RuntimeSettings())
    assert model.run({"idx": np.array([0, 9])})[0].tolist() == [0.0, 90.0]
    with pytest.raises(InferenceError) as caught:
        model.run({"idx": np.array([3, 10])})  # out of the table: ONNX Runtime fails the run
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert model.run({"idx": np.array([1])})[0].tolist() == [10.0]  # the session still serves


def test_without_a_native_binding_the_public_run_is_used() -> None:
    class PublicOnly:  # what an onnxruntime that moved its binding would look like
        def run(self, names: list[str], feeds: dict[str, Any], options: Any = None) -> list[Any]:
            return [names, feeds, options]

    session = PublicOnly()
    call = _direct_run(session)  # type: ignore[arg-type]
    assert call(["y"], {"x": 1}, None) == [["y"], {"x": 1}, None]
