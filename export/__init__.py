"""Torch side (the ``[export]`` extra): DINOv2 and SAM/MobileSAM -> ONNX -> TensorRT plans."""
