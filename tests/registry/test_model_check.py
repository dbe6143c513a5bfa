"""No model file reaches outside itself: ONNX external data is refused at registration and
at load, wherever the model is nested, and the refusal never names the path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import modelzoo
from modelgate.gateway.core.runtime import ModelLoadError, OnnxModel
from modelgate.gateway.settings import RuntimeSettings
from modelgate.registry.model_check import UnsafeModelError, check_self_contained
from modelgate.registry.signature import InvalidModelError
from modelgate.registry.store import RegistryStore

SECRET = b"webhook-secret: whsec_do-not-leak"


@pytest.fixture
def secret_next_door(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A secret file in the server's working directory (ONNX Runtime refuses paths that
    leave it, but everything inside it, such as a secret file, is readable)."""
    (tmp_path / "webhook-secret").write_bytes(SECRET)
    monkeypatch.chdir(tmp_path)
    return "webhook-secret"


def test_the_attack_is_real_in_bare_onnx_runtime(secret_next_door: str) -> None:
    """What the checks stop: ONNX Runtime alone hands the file to the caller."""
    session = ort.InferenceSession(
        modelzoo.file_reader(secret_next_door, len(SECRET)), providers=["CPUExecutionProvider"]
    )
    (out,) = session.run(None, {"x": np.zeros((1, 1), np.float32)})
    assert out.tobytes() == SECRET


def test_the_gateway_refuses_to_load_it(secret_next_door: str) -> None:
    with pytest.raises(ModelLoadError) as caught:
        OnnxModel(modelzoo.file_reader(secret_next_door, len(SECRET)), RuntimeSettings())
    assert "external data" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_the_registry_refuses_to_register_it(secret_next_door: str, tmp_path: Path) -> None:
    store = RegistryStore(tmp_path / "store", create=True)
    with pytest.raises(InvalidModelError) as caught:
        store.register("thief", modelzoo.file_reader(secret_next_door, len(SECRET)))
    assert "external data" in str(caught.value)
    assert "secret" not in str(caught.value) and str(len(SECRET)) not in str(caught.value)
    assert store.list_versions() == []


def _external(name: str) -> TensorProto:
    tensor = helper.make_tensor(name, TensorProto.FLOAT, [1], [0.0])
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    return tensor


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _graph(
    nodes: list[onnx.NodeProto], initializers: tuple[TensorProto, ...] = ()
) -> onnx.GraphProto:
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    return helper.make_graph(nodes, "g", [], [y], list(initializers))


def test_a_constant_inside_a_branch_is_found() -> None:
    branch = _graph([helper.make_node("Constant", [], ["y"], value=_external("hidden"))])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    with pytest.raises(UnsafeModelError, match="external data"):
        check_self_contained(_model(_graph([node], [cond])))


def test_a_sparse_initializer_and_a_function_body_are_found() -> None:
    sparse = helper.make_sparse_tensor(_external("values"), _external("indices"), [4])
    graph = _graph([helper.make_node("Identity", ["x"], ["y"])])
    graph.sparse_initializer.append(sparse)
    with pytest.raises(UnsafeModelError):
        check_self_contained(_model(graph))

    model = _model(_graph([helper.make_node("Identity", ["x"], ["y"])]))
    body = helper.make_node("Constant", [], ["c"], value=_external("in_function"))
    model.functions.append(helper.make_function("local", "f", [], ["c"], [body], []))
    with pytest.raises(UnsafeModelError):
        check_self_contained(model)


def test_self_contained_models_pass() -> None:
    check_self_contained(onnx.load_from_string(modelzoo.classifier()))
