"""One module per step notebook, named after it. Stages never import each other: what they share
lives in :mod:`workbench.ml` and :mod:`workbench.storage`.
"""
