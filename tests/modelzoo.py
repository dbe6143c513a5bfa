"""Small ONNX models the tests build: trained with scikit-learn or written with onnx.helper."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FEATURES = 8

ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def classifier(first: int = 0) -> bytes:
    """StandardScaler + LogisticRegression over FEATURES FP32 features, 3 classes decided by
    features `first` and `first + 1` (another `first` gives a model that mostly disagrees)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(600, FEATURES)).astype(np.float32)
    y = (x[:, first] > 0).astype(int) + (x[:, first + 1] > 0.5).astype(int)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    pipeline.fit(x, y)
    model = to_onnx(
        pipeline,
        initial_types=[("input", FloatTensorType([None, FEATURES]))],
        options={id(pipeline): {"zipmap": False}},
        target_opset=17,
    )
    return model.SerializeToString()


def echo(datatype: str, width: int = 3, batch: int | str = "N") -> bytes:
    """Identity over an input of `datatype`: output `y` equals input `x` ([batch, width])."""
    elem = ONNX_TYPES[datatype]
    x = helper.make_tensor_value_info("x", elem, [batch, width])
    y = helper.make_tensor_value_info("y", elem, [batch, width])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "echo", [x], [y])
    return _serialise(graph)


def lookup(rows: int = 10) -> bytes:
    """`out = table[idx]`: ONNX Runtime fails the run when an index is out of range."""
    table = helper.make_tensor(
        "table", TensorProto.FLOAT, [rows], np.arange(rows, dtype=np.float32) * 10
    )
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N"])
    node = helper.make_node("Gather", ["table", "idx"], ["out"])
    graph = helper.make_graph([node], "lookup", [idx], [out], initializer=[table])
    return _serialise(graph)


def two_inputs() -> bytes:
    """`sum = a + b` over two FP32 inputs [N, 2]: requests must give both."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2])
    out = helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["sum"])], "add", [a, b], [out])
    return _serialise(graph)


def slow(iterations: int = 200_000, width: int = 4) -> bytes:
    """Identity that takes a while: a Loop of `iterations` MatMuls by the identity matrix.

    ONNX has no sleep; each loop turn costs about a microsecond in ONNX Runtime whatever the
    batch size, so the default runs for roughly 0.2 s per batch and outputs `y == x`.
    """
    weight = numpy_helper.from_array(np.eye(width, dtype=np.float32), "w")
    trips = numpy_helper.from_array(np.array(iterations, dtype=np.int64), "trips")
    keep_going = numpy_helper.from_array(np.array(True), "keep_going")
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["y_in", "w"], ["y_out"]),
            helper.make_node("Identity", ["c_in"], ["c_out"]),
        ],
        "turn",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("y_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("y_out", TensorProto.FLOAT, None),
        ],
    )
    loop = helper.make_node("Loop", ["trips", "keep_going", "x"], ["y"], body=body)
    graph = helper.make_graph(
        [loop],
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        initializer=[weight, trips, keep_going],
    )
    return _serialise(graph)


def _serialise(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def file_reader(location: str, length: int) -> bytes:
    """A model whose output is an initializer kept as ONNX external data at `location`: served
    as it is, ONNX Runtime would return that file's first `length` bytes to any caller."""
    stolen = TensorProto()
    stolen.name = "stolen"
    stolen.data_type = TensorProto.UINT8
    stolen.dims.append(length)
    stolen.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = stolen.external_data.add()
        entry.key, entry.value = key, value
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [length])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["stolen"], ["y"])], "reader", [x], [y], [stolen]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # onnx's checker would refuse the path; the attacker skips it
    return model.SerializeToString()


def filler() -> bytes:
    """`total = sum(ones(n))` for an INT64 input `n` of shape [1]: a request chooses how much
    memory the run allocates (n = 10**10 asks for 40 GB)."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [
        helper.make_node("ConstantOfShape", ["n"], ["ones"], value=one),
        helper.make_node("ReduceSum", ["ones"], ["total"], keepdims=1),
    ]
    n = helper.make_tensor_value_info("n", TensorProto.INT64, [1])
    total = helper.make_tensor_value_info("total", TensorProto.FLOAT, [1])
    return _serialise(helper.make_graph(nodes, "filler", [n], [total]))


def folding_filler(elements: int) -> bytes:
    """`y = x + sum(ones(elements))` with `elements` a constant: ONNX Runtime's constant
    folding would build the ones (4 bytes each) while loading the model."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    shape = numpy_helper.from_array(np.array([elements], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["ones"], value=one),
        helper.make_node("ReduceSum", ["ones"], ["total"], keepdims=1),
        helper.make_node("Add", ["x", "total"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])
    return _serialise(helper.make_graph(nodes, "folding", [x], [y], initializer=[shape]))


def configured(options: dict[str, int]) -> bytes:
    """Identity over FP32 [N, 2] whose metadata carries ONNX Runtime session options
    (`ort_config`), which ONNX Runtime applies when ORT_LOAD_CONFIG_FROM_MODEL=1."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "configured", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"ort_config": json.dumps({"session_options": options})})
    return model.SerializeToString()


def spinner() -> bytes:
    """`y = x` after a Loop of `turns` empty turns, for an INT64 input `turns` of shape [1]
    and FP32 `x` of shape [1]: instant on warm-up's zeros, endless for turns = 10**12."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["c_in"], ["c_out"]),
            helper.make_node("Identity", ["v_in"], ["v_out"]),
        ],
        "turn",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )
    keep_going = numpy_helper.from_array(np.array(True), "keep_going")
    nodes = [
        helper.make_node("Squeeze", ["turns"], ["trips"]),
        helper.make_node("Loop", ["trips", "keep_going", "x"], ["y"], body=body),
    ]
    graph = helper.make_graph(
        nodes,
        "spinner",
        [
            helper.make_tensor_value_info("turns", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[keep_going],
    )
    return _serialise(graph)
