"""Triton's client library, unchanged, against the gateway over both protocols."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sync_clients import client_module, connect, in_thread
from tritonclient.utils import InferenceServerException

from modelgate.gateway.server import Gateway

Reference = Callable[[bytes, dict[str, np.ndarray]], list[np.ndarray]]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("binary", [True, False])
async def test_triton_client_gets_what_onnx_runtime_computes(
    gateway: Gateway,
    model_files: dict[str, bytes],
    reference: Reference,
    rng: np.random.Generator,
    protocol: str,
    binary: bool,
) -> None:
    x = rng.normal(size=(4, 8)).astype(np.float32)

    def call() -> tuple[Any, Any, np.ndarray, np.ndarray, str]:
        client = connect(gateway, protocol)
        module = client_module(protocol)
        try:
            assert client.is_server_live() and client.is_server_ready()
            assert client.is_model_ready("classifier")
            metadata = client.get_model_metadata("classifier")
            config = client.get_model_config("classifier")
            tensor = module.InferInput("input", list(x.shape), "FP32")
            names = ("label", "probabilities")
            if protocol == "http":
                tensor.set_data_from_numpy(x, binary_data=binary)
                outputs = [module.InferRequestedOutput(n, binary_data=binary) for n in names]
            else:
                tensor.set_data_from_numpy(x)
                outputs = [module.InferRequestedOutput(n) for n in names]
            result = client.infer("classifier", [tensor], outputs=outputs, request_id="t-1")
            response = result.get_response()
            request_id = response.id if protocol == "grpc" else response["id"]
            return (
                metadata,
                config,
                result.as_numpy("label"),
                result.as_numpy("probabilities"),
                request_id,
            )
        finally:
            client.close()

    metadata, config, labels, probabilities, request_id = await in_thread(call)
    want_labels, want_probabilities = reference(model_files["classifier"], {"input": x})
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(probabilities, want_probabilities, rtol=1e-6)
    assert request_id == "t-1"
    if protocol == "grpc":
        assert [i.name for i in metadata.inputs] == ["input"]
        assert config.config.max_batch_size == 64
    else:
        assert [i["name"] for i in metadata["inputs"]] == ["input"]
        assert config["max_batch_size"] == 64


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_triton_client_sees_strings_and_errors(gateway: Gateway, protocol: str) -> None:
    words = np.array([["alpha", "βeta", ""], ["x", "y", "z"]], dtype=object)

    def call() -> tuple[np.ndarray, str]:
        client = connect(gateway, protocol)
        module = client_module(protocol)
        try:
            tensor = module.InferInput("x", list(words.shape), "BYTES")
            tensor.set_data_from_numpy(words)
            echoed = client.infer("echo_bytes", [tensor]).as_numpy("y")
            with pytest.raises(InferenceServerException) as err:
                client.infer("no_such_model", [tensor])
            return echoed, str(err.value)
        finally:
            client.close()

    echoed, error = await in_thread(call)
    assert [[v.decode() for v in row] for row in echoed] == words.tolist()
    assert "no_such_model" in error
