"""Do other runtimes give PyTorch's answers? Error statistics, Polygraphy's rule and one verdict."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from workbench.errors import ModelError
from workbench.ml.runtimes import AS_EXPORTED, BACKENDS, ModelFiles, one_line

if TYPE_CHECKING:
    pass


REFERENCE = "pytorch"


BATCH_SIZES = (1, 257)  # dynamic batch is proven on these, not assumed


def score(outputs: np.ndarray, labels: np.ndarray, regression: bool) -> float:
    """The task's score: accuracy for classes, R² (on the standardised target) for a number."""
    if not regression:
        return float((outputs.argmax(1) == labels).mean())
    error = ((outputs.reshape(len(outputs), -1)[:, 0] - labels) ** 2).sum()
    spread = ((labels - labels.mean()) ** 2).sum()
    return float(1.0 - error / spread) if spread > 0 else float("nan")


def compare(
    candidate: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray,
    atol: float,
    rtol: float,
    regression: bool = False,
) -> dict[str, float]:
    """Error statistics and agreement of ``candidate`` outputs against ``reference`` outputs.

    ``within_tolerance`` is the share of elements passing the elementwise rule NVIDIA Polygraphy
    applies (``--check-error-stat elemwise``): |a - b| <= atol or |a - b| / |b| <= rtol. Classes
    also count the rows whose predicted class agrees; a number has no class to agree on.
    """
    abs_err = np.abs(candidate - reference)
    rel_err = abs_err / np.maximum(np.abs(reference), 1e-12)
    stats = {
        "max_abs_err": float(abs_err.max()),
        "mean_abs_err": float(abs_err.mean()),
        "p99_abs_err": float(np.quantile(abs_err, 0.99)),
        "max_rel_err": float(rel_err.max()),
        "mean_rel_err": float(rel_err.mean()),
        "p99_rel_err": float(np.quantile(rel_err, 0.99)),
        "within_tolerance": float(((abs_err <= atol) | (rel_err <= rtol)).mean()),
    }
    if regression:
        return stats | {"r2": score(candidate, labels, True)}
    return stats | {
        "argmax_agreement": float((candidate.argmax(1) == reference.argmax(1)).mean()),
        "accuracy": score(candidate, labels, False),
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
    def score_name(self) -> str:
        """accuracy for classes, r2 for a number."""
        return "r2" if "r2" in self.stats.get(REFERENCE, {}) else "accuracy"

    @property
    def accuracies(self) -> dict[str, float]:
        """The task's score (accuracy, or R² for a number) of PyTorch and of every backend that ran;
        a backend that failed has none."""
        key = self.score_name
        return {name: stats[key] for name, stats in self.stats.items() if key in stats}

    @property
    def scores_agree(self) -> bool:
        """Whether every backend that ran scores within 0.001 of PyTorch (and at least one ran)."""
        scores = self.accuracies
        return len(scores) > 1 and all(abs(v - scores[REFERENCE]) <= 1e-3 for v in scores.values())

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
            if key in ("loaded", "ran", "dynamic_batch", "as_exported_agrees"):
                return "yes" if value == 1.0 else "no"
            if key == "r2":
                return f"{value:.4f}"
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


def as_exported_check(
    name: str, blob: bytes, x: np.ndarray, out: np.ndarray, atol: float, rtol: float
) -> tuple[dict[str, float], str | None]:
    """Whether backend ``name`` gives the same logits on the file as exported as on the form it runs.

    A backend in :data:`AS_EXPORTED` runs a rewrite of the file (onnxruntime: initializers as
    constants) while MXNet reads the file as it is, so the rewrite must change no answer beyond
    ``atol`` / ``rtol`` (the elementwise rule of :func:`compare`). Returns the stats to add to the
    backend's entry, and a FAIL reason when the forms differ or the file as exported does not run.
    """
    try:
        exported = np.asarray(AS_EXPORTED[name](ModelFiles.of_onnx(blob))(x))
        if exported.shape != out.shape:
            raise ModelError(f"returns logits of shape {exported.shape}, the fast form {out.shape}")
    except Exception as exc:  # broad on purpose: a runtime's own failure becomes the FAIL reason
        return {"as_exported_agrees": 0.0}, f"{name}: the model as exported does not run ({one_line(exc)})"
    abs_err = np.abs(exported - out)
    inside = (abs_err <= atol) | (abs_err <= rtol * np.abs(out))
    stats = {"as_exported_agrees": float(inside.all()), "as_exported_max_abs_err": float(abs_err.max(initial=0.0))}
    if inside.all():
        return stats, None
    return stats, (
        f"{name}: the model as exported (initializers as inputs) and the fast form differ on {1 - inside.mean():.2%} "
        f"of logits beyond atol={atol:g} / rtol={rtol:g} (max abs err {stats['as_exported_max_abs_err']:.3g})"
    )


def three_way(
    blob: bytes,
    x: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray,
    backends: list[str],
    atol: float,
    rtol: float,
    min_agreement: float,
    regression: bool = False,
) -> Parity:
    """Run every backend on ``x`` and judge it against PyTorch's ``reference`` logits.

    Any exception from a backend (runtimes raise their own types: KeyError, MXNetError, onnxruntime's
    Fail) becomes that backend's FAIL reason, so one broken backend never hides the others' results.
    A backend that runs a rewritten form of the file (onnxruntime) is also run on the file as
    exported, and the two forms must agree (:func:`as_exported_check`).
    """
    key = "r2" if regression else "accuracy"
    parity = Parity(reference, labels, {}, {REFERENCE: {key: score(reference, labels, regression)}})
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
        stats = {
            "loaded": 1.0,
            **compare(out, reference, labels, atol, rtol, regression),
            "dynamic_batch": float(not batch_errors),
        }
        forms_differ = None
        if name in AS_EXPORTED:
            form_stats, forms_differ = as_exported_check(name, blob, x, out, atol, rtol)
            stats |= form_stats
        parity.outputs[name], parity.stats[name] = out, stats
        if stats["within_tolerance"] < 1.0:
            parity.out_of_tolerance = True
            parity.reasons.append(
                f"{name}: {1 - stats['within_tolerance']:.2%} of logits outside atol={atol:g} / rtol={rtol:g} "
                f"(max abs err {stats['max_abs_err']:.3g})"
            )
        if stats.get("argmax_agreement", 1.0) < min_agreement:
            parity.out_of_tolerance = True
            parity.reasons.append(
                f"{name}: predicted classes agree on {stats['argmax_agreement']:.2%} of rows, below {min_agreement:.2%}"
            )
        if forms_differ:
            # both forms ran and differ: a matter of tolerances, unlike a form that does not run
            parity.out_of_tolerance |= "as_exported_max_abs_err" in stats
            parity.reasons.append(forms_differ)
        parity.reasons.extend(batch_errors)
    return parity
