"""Export of the generator's stateful step: ONNX (with its contract in metadata_props), TensorRT, Triton.

Imports torch, `training` and `stream_engine`; the runtime never imports this package.
"""
