"""ONNX Runtime sessions as the batcher calls them: the native run, its error mapping and the
limits of what a model may compute with (memory, time), at load, at warm-up and in runs."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import modelzoo
from conftest import peak_growth
from modelgate.gateway.core.errors import ErrorCode, InferenceError
from modelgate.gateway.core.runtime import ModelLoadError, OnnxModel, _direct_run
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


MiB = 1024 * 1024


def test_a_run_needing_more_memory_than_allowed_fails_and_the_session_serves_on() -> None:
    model = OnnxModel(modelzoo.filler(), RuntimeSettings(max_run_memory_bytes=64 * MiB))
    with peak_growth() as grown:
        for elements in (2 * 10**8, 10**10):  # 800 MB, which the system could give; 40 GB
            with pytest.raises(InferenceError) as caught:
                model.run({"n": np.array([elements])})
            assert caught.value.code is ErrorCode.INVALID_ARGUMENT
            assert "max_run_memory_bytes" in caught.value.message
        assert grown() < 500 * MiB
    assert model.run({"n": np.array([1000])})[0].tolist() == [1000.0]


def test_each_model_has_its_own_memory_cap() -> None:
    small = OnnxModel(modelzoo.filler(), RuntimeSettings(max_run_memory_bytes=16 * MiB))
    large = OnnxModel(modelzoo.filler(), RuntimeSettings(max_run_memory_bytes=256 * MiB))
    n = np.array([10 * MiB])  # 40 MiB of ones
    assert large.run({"n": n})[0].tolist() == [10 * MiB]
    with pytest.raises(InferenceError):
        small.run({"n": n})


def test_constant_folding_at_load_cannot_build_a_huge_tensor() -> None:
    """The ones are not folded while loading; warm-up computes them within the run cap,
    which refuses them, so the model does not load."""
    settings = RuntimeSettings(max_run_memory_bytes=64 * MiB)
    with peak_growth() as grown:
        model = OnnxModel(modelzoo.folding_filler(2 * 10**8), settings)  # 800 MB of ones
        with pytest.raises(InferenceError, match="max_run_memory_bytes"):
            model.warm_up()
        assert grown() < 500 * MiB
    small = OnnxModel(modelzoo.folding_filler(1000), settings)
    small.warm_up()
    assert small.run({"x": np.array([[0.5]], np.float32)})[0].tolist() == [[1000.5]]


def test_warm_up_refuses_inputs_whose_fixed_shape_exceeds_the_memory_cap() -> None:
    model = OnnxModel(
        modelzoo.echo("BYTES", width=10**6, batch=10**6),  # 8 TB of string pointers
        RuntimeSettings(max_run_memory_bytes=64 * MiB),
    )
    with pytest.raises(ModelLoadError, match="max_run_memory_bytes"):
        model.warm_up()


def test_a_run_past_max_run_seconds_is_stopped_and_the_next_is_served() -> None:
    settings = RuntimeSettings(max_run_seconds=0.2)
    runaway = OnnxModel(modelzoo.slow(iterations=10**12), settings)  # days of loop turns
    x = np.ones((2, 4), np.float32)
    with pytest.raises(InferenceError) as caught:
        runaway.run({"x": x})
    assert caught.value.code is ErrorCode.DEADLINE_EXCEEDED
    assert "max_run_seconds" in caught.value.message
    quick = OnnxModel(modelzoo.slow(iterations=10), settings)
    np.testing.assert_array_equal(quick.run({"x": x})[0], x)


def test_warm_up_of_a_runaway_model_is_stopped_too() -> None:
    runaway = OnnxModel(modelzoo.slow(iterations=10**12), RuntimeSettings(max_run_seconds=0.2))
    with pytest.raises(InferenceError) as caught:
        runaway.warm_up()
    assert caught.value.code is ErrorCode.DEADLINE_EXCEEDED


def test_a_failing_run_writes_nothing_to_the_process_output(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A client can make runs fail at will: ONNX Runtime must not log a line for each."""
    model = OnnxModel(modelzoo.lookup(rows=10), RuntimeSettings())
    capfd.readouterr()
    for _ in range(3):
        with pytest.raises(InferenceError):
            model.run({"idx": np.array([99])})
    assert capfd.readouterr() == ("", "")


def test_run_limits_are_settings_with_sane_defaults() -> None:
    defaults = RuntimeSettings()
    assert defaults.max_run_memory_bytes == 1024 * MiB
    assert defaults.max_run_seconds == 30.0
    with pytest.raises(ValueError):
        RuntimeSettings(max_run_memory_bytes=1000)
    with pytest.raises(ValueError):
        RuntimeSettings(max_run_seconds=-1)
