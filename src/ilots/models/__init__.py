"""Networks (segmentation-models-pytorch, allow-listed builders), losses, metrics, the
LightningModule, the model bundle that carries everything prediction needs, and ONNX export."""
