#!/bin/sh
# The image's entry point. `docker run IMAGE` runs the pipeline (CMD is `run`); `nightly` runs
# deploy/nightly.sh (train, promote, score); any other arguments than `serve` go to the `workbench`
# command unchanged.
#
# `serve` is how SageMaker starts a hosting container (`docker run IMAGE serve`): it expects the
# server on 0.0.0.0:8080 and unpacks the endpoint's model.tar.gz into /opt/ml/model. So `serve`
# becomes `workbench serve` bound there, serving /opt/ml/model when that folder holds a model, else
# the model named by WORKBENCH_MODEL (a run folder, a model.tar.gz, an s3:// URI). Arguments given
# after `serve` come last and win: `serve --set serve.model=s3://bucket/model.tar.gz`.
set -eu

if [ "${1:-}" = "serve" ]; then
    shift
    # where SageMaker unpacks model.tar.gz (a variable only so that the script can be tested)
    sagemaker_model="${WORKBENCH_SAGEMAKER_MODEL_DIR:-/opt/ml/model}"
    model=""
    if [ -d "$sagemaker_model" ] && [ -n "$(ls -A "$sagemaker_model" 2>/dev/null)" ]; then
        model="$sagemaker_model"
    elif [ -n "${WORKBENCH_MODEL:-}" ]; then
        model="$WORKBENCH_MODEL"
    fi
    # SAGEMAKER_BIND_TO_PORT: the port SageMaker assigns a container of an inference pipeline
    port="${SAGEMAKER_BIND_TO_PORT:-${WORKBENCH_PORT:-8080}}"
    if [ -n "$model" ]; then
        set -- --set "serve.model=$model" "$@"
    fi
    set -- serve --set serve.host=0.0.0.0 --set "serve.port=$port" "$@"
fi

if [ "${1:-}" = "nightly" ]; then  # the nightly refresh: train, promote through the gate, score
    shift
    exec /bin/sh "$(dirname "$0")/nightly.sh" "$@"
fi

if [ "${1:-}" = "dask" ]; then  # a Dask cluster's scheduler or worker: `dask worker tcp://HOST:8786`
    exec "$@"
fi

exec workbench "$@"
