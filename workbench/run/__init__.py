"""Running the pipeline: step contexts, kernels, papermill execution, reports."""
