"""`modelgate demo`: train a small classifier, register it in the embedded registry and
serve it, printing a curl command and a Python gRPC snippet that work as printed."""

from __future__ import annotations

import asyncio
import hashlib
import signal

import numpy as np
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelgate.gateway.server import Addresses, Gateway
from modelgate.gateway.settings import ServerSettings
from modelgate.monitor.profile import build_profile
from modelgate.registry.reference import run_model
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import Stage

MODEL_NAME = "iris"
FEATURE_NAMES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def train_model() -> tuple[bytes, np.ndarray]:
    """StandardScaler + LogisticRegression on the iris data set (bundled with scikit-learn);
    the model and its training features (the drift monitor's reference)."""
    features, labels = load_iris(return_X_y=True)
    features = features.astype(np.float32)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    pipeline.fit(features, labels)
    onnx_model = to_onnx(
        pipeline,
        initial_types=[("input", FloatTensorType([None, features.shape[1]]))],
        options={id(pipeline): {"zipmap": False}},
        target_opset=17,
    )
    return bytes(onnx_model.SerializeToString()), features


def ensure_registered(store: RegistryStore) -> int:
    """Register the demo model in production, with the profile of its training data as the
    drift reference, unless that exact artifact already is."""
    model, features = train_model()
    sha = hashlib.sha256(model).hexdigest()
    for version in store.list_versions(MODEL_NAME):
        if version.sha256 == sha and version.stage is Stage.PRODUCTION:
            return version.version
    inputs = {"input": features}
    profile = build_profile(inputs, run_model(model, inputs), names={"input": FEATURE_NAMES})
    return store.register(
        MODEL_NAME,
        model,
        stage=Stage.PRODUCTION,
        description="modelgate demo: iris classifier",
        reference=profile.to_json(),
        actor="modelgate demo",
    ).version


def usage(addresses: Addresses) -> str:
    """What the demo prints: commands that work exactly as shown."""
    body = (
        '{"inputs":[{"name":"input","shape":[2,4],"datatype":"FP32",'
        '"data":[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3]]}]}'
    )
    return f"""
modelgate demo: model {MODEL_NAME!r} is served.

HTTP (Open Inference Protocol V2):
curl -s -X POST http://{addresses.http}/v2/models/{MODEL_NAME}/infer -H 'content-type: application/json' -d '{body}'

gRPC (Python, with the stubs modelgate ships):
python - <<'EOF'
import grpc, numpy as np
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pb_grpc
stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel("{addresses.grpc}"))
x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=x.shape)
request = pb.ModelInferRequest(model_name="{MODEL_NAME}", inputs=[tensor], raw_input_contents=[x.tobytes()])
reply = stub.ModelInfer(request)
print("version", reply.model_version, "labels", np.frombuffer(reply.raw_output_contents[0], dtype=np.int64))
EOF

Drift report (the reference is the training data; windows close every 5,000 rows or 60 s):
curl -s http://{addresses.http}/v2/models/{MODEL_NAME}/drift

Metrics: curl -s http://{addresses.metrics}/metrics | grep modelgate_
Stop with Ctrl-C.
"""  # noqa: E501


async def _demo(settings: ServerSettings) -> None:
    store = RegistryStore(settings.store, create=True)  # the demo starts its own store
    await asyncio.to_thread(ensure_registered, store)
    gateway = Gateway(settings, store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    addresses = await gateway.start()
    try:
        await gateway.wait_loaded()
        print(usage(addresses), flush=True)
        await stop.wait()
    finally:
        await gateway.stop()


def run(settings: ServerSettings) -> None:
    """Entry point of `modelgate demo`."""
    import uvloop

    uvloop.run(_demo(settings))
