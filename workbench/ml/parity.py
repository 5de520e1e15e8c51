"""Do other runtimes give PyTorch's answers? Error statistics, Polygraphy's rule and one verdict."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from workbench.errors import ModelError
from workbench.ml.runtimes import BACKENDS, ModelFiles, one_line

if TYPE_CHECKING:
    pass


REFERENCE = "pytorch"


BATCH_SIZES = (1, 257)  # dynamic batch is proven on these, not assumed


def compare(
    candidate: np.ndarray, reference: np.ndarray, labels: np.ndarray, atol: float, rtol: float
) -> dict[str, float]:
    """Error statistics and agreement of ``candidate`` logits against ``reference`` logits.

    ``within_tolerance`` is the share of elements passing the elementwise rule NVIDIA Polygraphy
    applies (``--check-error-stat elemwise``): |a - b| <= atol or |a - b| / |b| <= rtol.
    """
    abs_err = np.abs(candidate - reference)
    rel_err = abs_err / np.maximum(np.abs(reference), 1e-12)
    return {
        "max_abs_err": float(abs_err.max()),
        "mean_abs_err": float(abs_err.mean()),
        "p99_abs_err": float(np.quantile(abs_err, 0.99)),
        "max_rel_err": float(rel_err.max()),
        "mean_rel_err": float(rel_err.mean()),
        "p99_rel_err": float(np.quantile(rel_err, 0.99)),
        "within_tolerance": float(((abs_err <= atol) | (rel_err <= rtol)).mean()),
        "argmax_agreement": float((candidate.argmax(1) == reference.argmax(1)).mean()),
        "accuracy": float((candidate.argmax(1) == labels).mean()),
    }


@dataclass
class Parity:
    """PyTorch against each backend: a table, a plot and one verdict."""

    reference: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    outputs: dict[str, np.ndarray] = field(repr=False)
    stats: dict[str, dict[str, float]]
    reasons: list[str] = field(default_factory=list)
    out_of_tolerance: bool = field(default=False, repr=False)  # a reason is about tolerances: check() names them

    @property
    def accuracies(self) -> dict[str, float]:
        """Accuracy of PyTorch and of every backend that ran; a backend that failed has none."""
        return {name: stats["accuracy"] for name, stats in self.stats.items() if "accuracy" in stats}

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    @property
    def table(self) -> pd.DataFrame:
        """One column per backend, PyTorch first, formatted for reading (raw numbers in ``stats``)."""

        def show(key: str, value: float) -> str:
            if key in ("loaded", "ran", "dynamic_batch"):
                return "yes" if value == 1.0 else "no"
            if key in ("accuracy", "argmax_agreement", "within_tolerance"):
                return f"{value:.2%}"
            return f"{value:.2e}"

        rows = dict.fromkeys(key for stats in self.stats.values() for key in stats)
        return pd.DataFrame(
            {name: [show(k, stats[k]) if k in stats else "" for k in rows] for name, stats in self.stats.items()},
            index=pd.Index(list(rows), name="vs PyTorch"),
        )

    def check(self) -> None:
        """Fail the step (and so the run) when the verdict is FAIL, after it has been recorded."""
        if not self.passed:
            hint = "; see validate.atol/rtol/min_agreement" if self.out_of_tolerance else ""
            raise ModelError("parity FAIL: " + "; ".join(self.reasons) + hint)

    def _repr_html_(self) -> str:
        color = "#1a7f37" if self.passed else "#cf222e"
        backends = " and ".join(name for name in self.stats if name != REFERENCE)
        why = "" if self.passed else "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in self.reasons) + "</ul>"
        return f'<div style="font-size:1.4em;font-weight:600;color:{color}">PyTorch vs {backends}: {self.verdict}</div>{why}'


def backends_for(target: str) -> list[str]:
    # a model exported for onnxruntime is not meant for MXNet (newer opsets, other layout)
    return ["onnxruntime", "mxnet"] if target == "mxnet" else ["onnxruntime"]


def three_way(
    blob: bytes,
    x: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray,
    backends: list[str],
    atol: float,
    rtol: float,
    min_agreement: float,
) -> Parity:
    """Run every backend on ``x`` and judge it against PyTorch's ``reference`` logits.

    Any exception from a backend (runtimes raise their own types: KeyError, MXNetError, onnxruntime's
    Fail) becomes that backend's FAIL reason, so one broken backend never hides the others' results.
    """
    accuracy = float((reference.argmax(1) == labels).mean())
    parity = Parity(reference, labels, {}, {REFERENCE: {"accuracy": accuracy}})
    for name in backends:
        try:
            predict = BACKENDS[name](ModelFiles.of_onnx(blob))
        except Exception as exc:  # broad on purpose: third-party runtimes raise anything (see above)
            parity.stats[name] = {"loaded": 0.0}
            # a ModelError already says what to change; anything else is named by its type and first line
            why = (
                " ".join(str(exc).split())
                if isinstance(exc, ModelError)
                else f"cannot load the model ({one_line(exc)})"
            )
            parity.reasons.append(f"{name}: {why}")
            continue
        try:
            out = np.asarray(predict(x))
            if out.shape != reference.shape:
                raise ModelError(f"returns logits of shape {out.shape}, PyTorch {reference.shape}")
        except Exception as exc:  # broad on purpose: a runtime's own failure becomes the FAIL reason
            parity.stats[name] = {"loaded": 1.0, "ran": 0.0}
            parity.reasons.append(f"{name}: fails on the validation split ({one_line(exc)})")
            continue
        batch_errors = []
        for n in BATCH_SIZES:
            try:
                same = np.allclose(
                    predict(np.resize(x, (n, x.shape[1]))), np.resize(out, (n, out.shape[1])), atol=atol, rtol=rtol
                )
            except Exception as exc:  # broad on purpose: a runtime's own failure becomes the FAIL reason
                batch_errors.append(f"{name}: fails on a batch of {n} rows ({one_line(exc)})")
                continue
            if not same:
                parity.out_of_tolerance = True
                batch_errors.append(f"{name}: results change with the batch size ({n} rows)")
        stats = {"loaded": 1.0, **compare(out, reference, labels, atol, rtol), "dynamic_batch": float(not batch_errors)}
        parity.outputs[name], parity.stats[name] = out, stats
        if stats["within_tolerance"] < 1.0:
            parity.out_of_tolerance = True
            parity.reasons.append(
                f"{name}: {1 - stats['within_tolerance']:.2%} of logits outside atol={atol:g} / rtol={rtol:g} "
                f"(max abs err {stats['max_abs_err']:.3g})"
            )
        if stats["argmax_agreement"] < min_agreement:
            parity.out_of_tolerance = True
            parity.reasons.append(
                f"{name}: predicted classes agree on {stats['argmax_agreement']:.2%} of rows, below {min_agreement:.2%}"
            )
        parity.reasons.extend(batch_errors)
    return parity
