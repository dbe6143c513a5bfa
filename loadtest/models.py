"""The two benchmark models, built deterministically to ONNX bytes.

light: StandardScaler + LogisticRegression on 32 features. Almost free to run, so a benchmark
    on it measures protocol and Python overhead.
heavy: an untrained deep MLP (32 -> 1024 -> 36 x (1024 x 1024, one weight matrix reused) -> 1,
    ~38 M multiply-adds per row) whose compute dominates, so a benchmark on it measures how
    well batching turns spare requests into fuller ONNX Runtime calls. The issue asks for an
    in-process ceiling below ~3,000 rows/s: with onnxruntime 1.32 and one intra-op thread on
    the 2-core AMD EPYC benchmark machine it reaches ~2,800-2,970 rows/s at its best batch
    (64-128) and ~590 at batch 1 (`python -m loadtest.ceiling --model heavy`).

Both take "input" [N, 32] FP32 with a dynamic batch dimension.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES = 32
HEAVY_WIDTH = 1024
HEAVY_DEPTH = 36  # ~38M multiply-adds per row
_SEED = 20240601
_OPSET = 17


def build_light() -> bytes:
    """StandardScaler + LogisticRegression on synthetic data; outputs label and probabilities."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = make_classification(
        n_samples=2000, n_features=FEATURES, n_informative=12, random_state=_SEED
    )
    pipeline = Pipeline(
        [("scale", StandardScaler()), ("classify", LogisticRegression(max_iter=500))]
    )
    pipeline.fit(x.astype(np.float32), y)
    model = convert_sklearn(
        pipeline,
        initial_types=[("input", FloatTensorType([None, FEATURES]))],
        options={id(pipeline): {"zipmap": False}},
        target_opset={"": _OPSET, "ai.onnx.ml": 3},
    )
    model.graph.name = "light_logreg"  # skl2onnx names the graph with a random uuid
    return bytes(model.SerializeToString())


def build_heavy(width: int = HEAVY_WIDTH, depth: int = HEAVY_DEPTH) -> bytes:
    """MLP 32 -> width -> (width x `depth`) -> 1, random FP32 weights; output "output".

    The hidden layers share one width x width weight (tied, as in a recurrent cell unrolled
    `depth` times): 4 MB that stay in cache, so the model is compute-bound like a dense model
    of that depth rather than bound by streaming a fresh weight matrix from memory per call.
    """
    rng = np.random.default_rng(_SEED)

    def weight(rows: int, cols: int, gain: float) -> np.ndarray:
        return rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(
            np.sqrt(gain / rows)  # He/Xavier scaling keeps activations finite
        )

    initializers = [
        numpy_helper.from_array(weight(FEATURES, width, 2.0), "w_in"),
        numpy_helper.from_array(np.zeros(width, dtype=np.float32), "b_in"),
        numpy_helper.from_array(weight(width, width, 1.0), "w_hidden"),
        numpy_helper.from_array(np.zeros(width, dtype=np.float32), "b_hidden"),
        numpy_helper.from_array(weight(width, 1, 1.0), "w_out"),
        numpy_helper.from_array(np.zeros(1, dtype=np.float32), "b_out"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w_in"], ["mm_in"]),
        helper.make_node("Add", ["mm_in", "b_in"], ["add_in"]),
        helper.make_node("Relu", ["add_in"], ["h0"]),
    ]
    for layer in range(depth):
        nodes += [
            helper.make_node("MatMul", [f"h{layer}", "w_hidden"], [f"mm{layer}"]),
            helper.make_node("Add", [f"mm{layer}", "b_hidden"], [f"add{layer}"]),
            helper.make_node("Tanh", [f"add{layer}"], [f"h{layer + 1}"]),
        ]
    nodes += [
        helper.make_node("MatMul", [f"h{depth}", "w_out"], ["mm_out"]),
        helper.make_node("Add", ["mm_out", "b_out"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "heavy_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


MODELS: dict[str, Callable[[], bytes]] = {"light": build_light, "heavy": build_heavy}
