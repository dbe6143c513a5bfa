"""modelgate: a model serving gateway for ONNX models.

The code lives in three packages, kept as the repository's top-level folders and installed
under this one name: `modelgate.gateway` (serving), `modelgate.registry` (the model registry
and its clients) and `modelgate.monitor` (drift monitoring and the retraining webhook).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modelgate")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
