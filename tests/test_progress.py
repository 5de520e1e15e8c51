"""Progress bars: what a terminal shows."""

from __future__ import annotations

from workbench.progress import progress


def test_a_bar_counts_rows_as_words(capsys):
    bar = progress(total=None, desc="scoring", unit="row")
    bar.update(1797)
    bar.close()
    shown = capsys.readouterr().err
    assert "scoring: 1797 rows [" in shown and "rows/s" in shown and "1797row" not in shown


def test_a_bar_with_a_total_reads_the_same(capsys):
    bar = progress(total=10, desc="training", unit="epoch")
    bar.update(10)
    bar.close()
    shown = capsys.readouterr().err
    assert "10/10 [" in shown and " epochs/s]" in shown
