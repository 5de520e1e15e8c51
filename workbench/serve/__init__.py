"""``workbench serve``: one model over HTTP, SageMaker's hosting contract and the Open Inference Protocol v2.

Modules, in the order a request meets them: :mod:`~workbench.serve.server` (start, port, signals,
workers), :mod:`~workbench.serve.app` (routes, admission, metrics around every answer),
:mod:`~workbench.serve.media` (Content-Type and Accept), :mod:`~workbench.serve.sagemaker` and
:mod:`~workbench.serve.open_inference` (bodies in, answers out), :mod:`~workbench.serve.encoder` (the
fitted encoding, fast for plain values), :mod:`~workbench.serve.batching` (requests merged into
backend calls), :mod:`~workbench.serve.outputs` (softmax and argmax once per batch),
:mod:`~workbench.serve.model` (what ``serve.model`` names, loaded) and :mod:`~workbench.serve.metrics`.
"""
