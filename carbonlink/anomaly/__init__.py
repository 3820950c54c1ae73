"""The anomaly runtime shared by the edge and the cloud: window features, ONNX model loading and checking,
and scoring a stream of readings (docs/model-card.md). Needs numpy and onnxruntime (the ``edge-ml`` extra);
imports only the kernel."""
