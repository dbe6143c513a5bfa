"""The two benchmark models, built deterministically to ONNX bytes.

light: StandardScaler + LogisticRegression on 32 features. Almost free to run, so a benchmark
    on it measures protocol and Python overhead.
heavy: an untrained MLP (32 -> 8192 -> 2048 -> 1, ~68 MB of weights) whose compute
    dominates, so a benchmark on it measures how well batching turns spare requests into
    fuller ONNX Runtime calls. Its in-process ceiling with one intra-op thread depends on the
    ORT version: with onnxruntime 1.32 on the 2-core benchmark machine ~5,500-5,900 rows/s at
    batch 256 and ~4,500 at batch 64 (`python -m loadtest.ceiling --model heavy`).

Both take "input" [N, 32] FP32 with a dynamic batch dimension.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES = 32
HEAVY_WIDTHS = (8192, 2048)  # chosen when 4096 -> 2048 peaked ~2.5x higher than this
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


def build_heavy(widths: tuple[int, ...] = HEAVY_WIDTHS) -> bytes:
    """MLP 32 -> widths... -> 1 (MatMul + Add + Relu, random FP32 weights); output "output"."""
    rng = np.random.default_rng(_SEED)
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    previous, width_in = "input", FEATURES
    for layer, width_out in enumerate((*widths, 1)):
        weight = rng.standard_normal((width_in, width_out), dtype=np.float32)
        weight *= np.float32(np.sqrt(2.0 / width_in))  # He scaling keeps activations finite
        bias = np.zeros(width_out, dtype=np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"w{layer}"),
            numpy_helper.from_array(bias, f"b{layer}"),
        ]
        last = layer == len(widths)
        nodes.append(helper.make_node("MatMul", [previous, f"w{layer}"], [f"mm{layer}"]))
        added = "output" if last else f"add{layer}"
        nodes.append(helper.make_node("Add", [f"mm{layer}", f"b{layer}"], [added]))
        if not last:
            nodes.append(helper.make_node("Relu", [added], [f"relu{layer}"]))
            previous = f"relu{layer}"
        width_in = width_out
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
