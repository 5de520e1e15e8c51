"""What a reader of a training run must not miss, from its final metrics alone: torch-free, so the
HTML report says it without loading the training code."""

from __future__ import annotations

import html
from dataclasses import dataclass

# A model is "near chance" when its final validation accuracy closes less than this share of the
# gap from chance (always predicting the most frequent validation class) to a perfect score: 0.325
# on ten balanced digits, 0.625 on a balanced binary task, 0.9625 where one class is 95% of the rows.
# A share of the gap rather than a fixed margin, so an imbalanced split does not hide a useless model.
NEAR_CHANCE_SHARE = 0.25


def is_near_chance(accuracy: float, chance: float) -> bool:
    """Whether ``accuracy`` is not clearly above ``chance`` (see :data:`NEAR_CHANCE_SHARE`)."""
    return accuracy < chance + NEAR_CHANCE_SHARE * (1.0 - chance)


def training_warnings(metrics: dict[str, float]) -> list[str]:
    """What a reader of the run must not miss, rebuilt from the step's final metrics alone, so the
    notebook, a distributed run and the HTML report all say the same thing."""
    found = []
    if metrics.get("near_chance") and "val_r2" in metrics:
        found.append(
            f"validation R² {metrics['val_r2']:.3f} is near zero: the model predicts little better than the "
            "training mean; it has learnt little (check train.lr, train.epochs and the learning curves)"
        )
    elif metrics.get("near_chance"):
        found.append(
            f"validation accuracy {metrics['val_accuracy']:.3f} is near chance: always predicting the most "
            f"frequent class scores {metrics['chance_accuracy']:.3f}; the model has learnt little "
            "(check train.lr, train.epochs and the learning curves)"
        )
    return found


@dataclass(frozen=True)
class WarningBanner:
    """Warnings drawn in a colour a notebook reader sees (and as ``WARNING:`` lines in plain text),
    so a useless model is not mistaken for a finished one in JupyterLab or the HTML report."""

    lines: tuple[str, ...]

    def _repr_html_(self) -> str:
        if not self.lines:
            return '<p style="color:#1a7f37">No training warnings.</p>'
        items = "".join(f"<p style='margin:0.2em 0'><b>WARNING:</b> {html.escape(line)}</p>" for line in self.lines)
        return (
            '<div style="background:#fff4e5;border-left:6px solid #d1242f;color:#8a1c1c;padding:0.5em 1em">'
            f"{items}</div>"
        )

    def __repr__(self) -> str:
        return "\n".join(f"WARNING: {line}" for line in self.lines) or "No training warnings."
