"""No model file reaches outside itself or past its bounds, at registration and at load.

ONNX external data is refused wherever the model nests it, and the refusal never names the
path; so are session options in the metadata, custom operator domains, compiled EPContext
blobs, tensors declaring more than they hold, and graphs too large or too deep."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import modelzoo
from modelgate.gateway.core.runtime import ModelLoadError, OnnxModel
from modelgate.gateway.settings import RuntimeSettings
from modelgate.registry.model_check import (
    MAX_DEPTH,
    MAX_NODES,
    UnsafeModelError,
    check_self_contained,
    parse_model,
)
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


def _io_graph(nodes: list[onnx.NodeProto], *initializers: TensorProto) -> onnx.GraphProto:
    """`nodes` from FP32 input `x` to output `y`, both of any shape."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return helper.make_graph(nodes, "g", [x], [y], list(initializers))


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


# --- what else a model file could make ONNX Runtime do --------------------------------------


def test_session_options_in_the_metadata_are_real_in_bare_onnx_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the `ort_config` check stops: with ORT_LOAD_CONFIG_FROM_MODEL=1 in the host's
    environment, a model chooses its thread pool size and writes profiling files."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ORT_LOAD_CONFIG_FROM_MODEL", "1")
    threads = len(list(Path("/proc/self/task").iterdir()))
    options = {"intra_op_num_threads": 24, "enable_profiling": 1}
    session = ort.InferenceSession(modelzoo.configured(options), providers=["CPUExecutionProvider"])
    assert len(list(Path("/proc/self/task").iterdir())) >= threads + 20
    session.run(None, {"x": np.zeros((1, 2), np.float32)})
    del session
    assert list(tmp_path.glob("onnxruntime_profile*"))


def _with_ort_config() -> bytes:
    return modelzoo.configured({"intra_op_num_threads": 24})


def _custom_operator() -> bytes:
    node = helper.make_node("Reverse", ["x"], ["y"], domain="ai.onnx.contrib", name="rev")
    model = _model(_io_graph([node]))
    model.opset_import.append(helper.make_opsetid("ai.onnx.contrib", 1))
    return model.SerializeToString()


def _compiled_blob() -> bytes:
    node = helper.make_node(
        "EPContext", ["x"], ["y"], domain="com.microsoft", embed_mode=0, ep_cache_context="c.bin"
    )
    model = _model(_io_graph([node]))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model.SerializeToString()


def _hollow_initializer() -> bytes:
    """A weight declaring 10**12 floats (4 TB) and holding none."""
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[10**12])
    return _model(
        _io_graph([helper.make_node("Add", ["x", "w"], ["y"])], weight)
    ).SerializeToString()


def _short_raw_constant() -> bytes:
    value = TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[1000], raw_data=b"\0" * 4)
    node = helper.make_node("Constant", [], ["c"], value=value, name="short")
    return _model(_io_graph([node, helper.make_node("Add", ["x", "c"], ["y"])])).SerializeToString()


def _sparse_bomb() -> bytes:
    """One stored value in a sparse tensor of 10**12 elements, which ONNX Runtime stores dense."""
    values = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    indices = helper.make_tensor("w_indices", TensorProto.INT64, [1], [0])
    graph = _io_graph([helper.make_node("Add", ["x", "w"], ["y"])])
    graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [10**12]))
    return _model(graph).SerializeToString()


def _function_bomb(levels: int = 7, calls: int = 10) -> bytes:
    """A 2 KB file of local functions each calling the previous one `calls` times:
    calls**(levels - 1) nodes once ONNX Runtime inlines them."""
    functions = [
        helper.make_function(
            "f",
            "f0",
            ["a"],
            ["b"],
            [helper.make_node("Neg", ["a"], ["b"])],
            [helper.make_opsetid("", 17)],
        )
    ]
    for level in range(1, levels):
        names = ["a"] + [f"t{i}" for i in range(calls - 1)] + ["b"]
        body = [
            helper.make_node(f"f{level - 1}", [names[i]], [names[i + 1]], domain="f")
            for i in range(calls)
        ]
        imports = [helper.make_opsetid("", 17), helper.make_opsetid("f", 1)]
        functions.append(helper.make_function("f", f"f{level}", ["a"], ["b"], body, imports))
    top = helper.make_node(f"f{levels - 1}", ["x"], ["y"], domain="f")
    model = _model(_io_graph([top]))
    model.opset_import.append(helper.make_opsetid("f", 1))
    model.functions.extend(functions)
    return model.SerializeToString()


def _recursive_function() -> bytes:
    body = [helper.make_node("loop", ["a"], ["b"], domain="f")]
    function = helper.make_function("f", "loop", ["a"], ["b"], body, [helper.make_opsetid("f", 1)])
    model = _model(_io_graph([helper.make_node("loop", ["x"], ["y"], domain="f")]))
    model.opset_import.append(helper.make_opsetid("f", 1))
    model.functions.append(function)
    return model.SerializeToString()


def _deep_branches(depth: int = MAX_DEPTH + 1) -> bytes:
    """`depth` levels of If nodes, each one's then-branch holding the next."""
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    leaf = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "leaf", [], [y])
    branch = leaf
    for level in range(depth):
        node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=leaf)
        branch = helper.make_graph([node], f"level{level}", [], [y])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    return _model(_io_graph(list(branch.node), cond)).SerializeToString()


HOSTILE = {
    "ort_config": (_with_ort_config, "'ort_config' entry"),
    "custom operator": (_custom_operator, "'ai.onnx.contrib', which ONNX Runtime does not ship"),
    "EPContext": (_compiled_blob, "is an EPContext node"),
    "hollow initializer": (_hollow_initializer, "tensor 'w' declares shape [1000000000000]"),
    "short constant": (_short_raw_constant, "tensor 'short.value' declares shape [1000]"),
    "sparse bomb": (_sparse_bomb, "sparse tensor(s) 'w' expand to 4000000000000 bytes"),
    "function bomb": (_function_bomb, f"more than {MAX_NODES} nodes"),
    "recursive function": (_recursive_function, "local function f:loop calls itself"),
    "deep branches": (_deep_branches, f"nest more than {MAX_DEPTH} deep"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_the_registry_refuses_a_hostile_model(case: str, tmp_path: Path) -> None:
    build, says = HOSTILE[case]
    store = RegistryStore(tmp_path / "store", create=True)
    with pytest.raises(InvalidModelError, match=re.escape(says)):
        store.register("hostile", build())
    assert store.list_versions() == []


@pytest.mark.parametrize("case", HOSTILE)
def test_the_gateway_refuses_to_load_a_hostile_model(case: str) -> None:
    build, says = HOSTILE[case]
    with pytest.raises(ModelLoadError, match=re.escape(says)):
        OnnxModel(build(), RuntimeSettings())


def test_what_the_checks_allow() -> None:
    """Local functions in a domain of their own, subgraphs, a small sparse tensor: counted
    as ONNX Runtime builds them."""
    assert parse_model(modelzoo.classifier()).nodes == 3
    assert parse_model(_function_bomb(levels=3, calls=10)).nodes == 100
    assert parse_model(_deep_branches(depth=MAX_DEPTH)).nodes == 2 * MAX_DEPTH + 1
    values = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    indices = helper.make_tensor("w_indices", TensorProto.INT64, [2], [0, 7])
    graph = _io_graph([helper.make_node("Add", ["x", "w"], ["y"])])
    graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [1000]))
    model = _model(graph).SerializeToString()
    parse_model(model)
    x = np.ones(1000, np.float32)
    y = OnnxModel(model, RuntimeSettings()).run({"x": x})[0]
    assert (y[0], y[7], y[8]) == (2.0, 3.0, 1.0)
