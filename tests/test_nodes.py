"""Training across machines: torchrun's c10d rendezvous, `workbench train-node`, SageMaker's hosts."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from support.cli import ROOT, workbench
from support.localpg import free_port

from workbench.config.parameters import load, sagemaker_nodes
from workbench.config.schema import TrainParams
from workbench.errors import ParameterError, WorkbenchError
from workbench.ml.training.job import TrainJob, torchrun_command
from workbench.run.nodes import join_training
from workbench.tracking import Tracker


@pytest.mark.e2e
def test_two_nodes_on_one_host_train_one_run(place):
    """Two torchrun agents on 127.0.0.1 as two nodes (gloo): one `workbench run`, one `workbench train-node`."""
    endpoint = f"127.0.0.1:{free_port()}"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workbench",
            "run",
            "--steps",
            "prepare,train",
            *place.sets("train.nodes=2", f"train.rdzv_endpoint={endpoint}", "train.epochs=6", "train.batch_size=64"),
            "--set=train.device=cpu",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (place.store / "runs").is_dir() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)
        run_id = Tracker(place.db).list_runs()[0]["id"]
        second = workbench("train-node", run_id, *place.sets())
        _, err = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, err[-3000:]
    assert second.code == 0, second.stderr[-3000:]
    assert f"joining at {endpoint} as one of 2 nodes" in second.stderr
    run = Tracker(place.db).get_run(run_id)
    assert run["status"] == "finished" and run["metrics"]["val_accuracy"] > 0.9  # the one-process band
    environment = json.loads((place.store / "runs" / run_id / "train" / "environment.json").read_text())
    assert environment["processes"] == 2


def test_the_rendezvous_line_of_each_node():
    job = TrainJob(
        run_id="r1",
        store="/s",
        db="sqlite:///t.db",
        train=TrainParams(nodes=2, processes=4, rdzv_endpoint="10.0.0.5:29400"),
        seed=0,
    )
    cmd = torchrun_command(job)
    assert cmd[3:8] == [
        "--nnodes=2",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=10.0.0.5:29400",
        "--rdzv_id=r1",
        "--nproc_per_node=4",
    ]
    single = torchrun_command(
        TrainJob(run_id="r1", store="/s", db="sqlite:///t.db", train=TrainParams(processes=2), seed=0)
    )
    assert "--standalone" in single and not any(part.startswith("--rdzv") for part in single)


def test_several_nodes_need_a_meeting_point():
    with pytest.raises(
        ParameterError, match=r"^train.nodes in --set train.nodes=2: 2 nodes need train.rdzv_endpoint, the host:port"
    ):
        load(sets=["train.nodes=2"])
    with pytest.raises(
        ParameterError, match=r"must be the host:port every node reaches, e.g. 10.0.0.5:29400, got 'gpu-1'"
    ):
        load(sets=["train.nodes=2", "train.rdzv_endpoint=gpu-1"])
    assert load(sets=["train.nodes=2", "train.rdzv_endpoint=gpu-1:29400"]).model.train.nodes == 2


def test_sagemaker_hosts_become_the_nodes(monkeypatch):
    hosts = {"SM_HOSTS": json.dumps(["algo-1", "algo-2", "algo-3"]), "SM_CURRENT_HOST": "algo-2"}
    assert sagemaker_nodes(hosts) == {"train.nodes": 3, "train.rdzv_endpoint": "algo-1:29400"}
    assert sagemaker_nodes({"SM_HOSTS": json.dumps(["algo-1"])}) == {} and sagemaker_nodes({}) == {}
    for key, value in hosts.items():
        monkeypatch.setenv(key, value)
    params = load(sets=["train.processes=8"])
    assert params.model.train.nodes == 3 and params.origin["train.nodes"] == "SM_HOSTS"
    assert params.model.train.rdzv_endpoint == "algo-1:29400"


def test_joining_a_one_node_run_or_a_run_that_never_trains_is_one_line(place):
    params = load(sets=[f"store={place.store}", f"db={place.db}"])
    tracker = Tracker(place.db)
    alone = tracker.create_run(str(place.store), params.values, params.origin)
    tracker.plan_steps(alone, ["prepare", "train"])
    tracker.start_step(alone, "train", "nb")
    with pytest.raises(ParameterError, match=rf"run {alone} trains on one node \(train.nodes: 1\); nothing to join"):
        join_training(alone, params, wait=5, say=lambda _: None)
    with pytest.raises(WorkbenchError, match=r"run never: its train step did not start within 0.3 s"):
        join_training("never", params, wait=0.3, say=lambda _: None, poll=0.1)
