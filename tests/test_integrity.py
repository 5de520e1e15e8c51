"""A model file is checked against the sha256 its run recorded when it is loaded for scoring or
serving: one changed or replaced since (by hand, by another tool) is refused in one line."""

from __future__ import annotations

import onnx
import pytest

from workbench.config.schema import ScoreParams
from workbench.errors import StoreError
from workbench.serve.model import load_model
from workbench.stages.batch_score import score_batch

COPIED_STEPS = ("prepare", "train", "export")


@pytest.fixture
def swapped(trained, stage_ctx_factory):
    """A copy of the shared model run, its files recorded as the copy wrote them."""
    unit = stage_ctx_factory("score", run_id="integrity-reader")
    for step in COPIED_STEPS:
        ctx = stage_ctx_factory(step, run_id="swapped")
        for item in unit.tracker.get_run("unit")["artifacts"]:
            if item["step"] == step:
                name = item["key"].split(f"/{step}/", 1)[1]
                ctx.save(name, unit.load(name, step, run="unit"))
    return ctx


def test_a_model_file_changed_after_its_run_is_refused(swapped, stage_ctx_factory):
    key = swapped.key("model.onnx", "export")
    original = swapped.store.read_bytes(key)
    proto = onnx.load_from_string(original)
    proto.doc_string = "replaced after the run"  # still a valid model that loads and runs
    swapped.store.write_bytes(key, proto.SerializeToString())  # written, but not recorded

    refusal = rf"^{swapped.store.uri(key)}: its sha256 \w{{12}}\.\.\. is not the \w{{12}}\.\.\. recorded when the run wrote it"
    score = stage_ctx_factory("score", run_id="integrity-score")
    with pytest.raises(StoreError, match=refusal) as caught:
        score_batch(score, ScoreParams(source="bundled:digits", model_run="swapped"), progress=False)
    assert "\n" not in str(caught.value)
    store, db = swapped.store.root, swapped.tracker.url
    with pytest.raises(StoreError, match=refusal):
        load_model("swapped", "onnxruntime", store, db)
    state = swapped.key("model.pth", "train")
    weights = swapped.store.read_bytes(state)
    swapped.store.write_bytes(state, weights + b"\0")
    with pytest.raises(StoreError, match=rf"^{swapped.store.uri(state)}: its sha256"):
        load_model("swapped", "torch", store, db)

    swapped.store.write_bytes(key, original)  # the files the run wrote load again
    swapped.store.write_bytes(state, weights)
    assert load_model("swapped", "onnxruntime", store, db).resolved == "swapped"
    result = score_batch(score, ScoreParams(source="bundled:digits", model_run="swapped"), progress=False)
    assert result.metrics["rows_scored"] == 1797
