"""ONNX graph rewrites (onnxscript rewriter / onnx-ir as the engine), one pass per module; see pipelines.py."""
