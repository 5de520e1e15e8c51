"""Engines that run prepare and batch scoring across processes or machines (``engine: dask``).

Nothing here is imported unless a step runs with ``engine: dask``: Dask is an optional extra.
"""
