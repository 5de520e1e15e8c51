"""The machine-learning building blocks the stages use: architectures, splits, training, ONNX
export, runtimes and parity, the SageMaker archive.
"""
