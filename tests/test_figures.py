"""The docs' pictures (experiments/figures.py): drawn from results files, skipped with a reason when they are missing,
and the forest plot is the one experiments/grpo_evaluation.py draws too."""

import json

import pytest

from experiments import figures


def evaluation(model: str, split: str, difference: float) -> dict:
    """A soundworld.evaluate report made with --compare, cut to what the forest plot reads."""
    compared = {metric: {"difference": difference, "interval": [difference - 0.02, difference + 0.02]}
                for metric in ("event_recall", "order_accuracy", "count_accuracy", "mean_score")}
    return {"model": model, "prompts": split, "seed": 7, "n": 3, "compared_to": {"model": "tiny", **compared}}


def test_a_forest_plot_is_drawn_from_evaluation_reports_and_a_missing_file_is_skipped(tmp_path, capsys):
    results = tmp_path / "results" / "shipped-default-eval"
    results.mkdir(parents=True)
    for split, difference in (("test", 0.03), ("heldout", -0.05)):
        (results / f"{split}-tiny-dpo.json").write_text(json.dumps(evaluation("tiny-dpo", split, difference)))
    written = figures.main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "docs"),
                            "--only", "forest-tiny-dpo", "forest-order-pairs"])
    assert written == [tmp_path / "docs" / "forest-tiny-dpo.png"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and written[0].stat().st_size > 10_000
    assert "forest-order-pairs: skipped, missing" in capsys.readouterr().err
    assert not (tmp_path / "docs" / "forest-order-pairs.png").exists()


def test_the_report_keeps_each_split_and_the_baseline(tmp_path):
    path = tmp_path / "test.json"
    path.write_text(json.dumps(evaluation("tiny-dpo", "test", 0.03)))
    report = figures.report_from_evaluations({"test": {"tuned": path}}, "title")
    assert report["models"] == ["tiny", "tuned"] and report["test"]["n"] == 3 and report["test"]["seed"] == 7
    assert report["test"]["compared"]["tuned"]["event_recall"]["difference"] == 0.03


def test_paired_differences_are_read_from_the_summaries_the_experiment_scripts_write(tmp_path):
    summary = {"runs": {"a": {"val": {"event_recall": 0.75, "event_recall_minus_tiny": "+0.054 [+0.027, +0.082]",
                                      "order_accuracy_minus_tiny": {"difference": -0.01, "interval": [-0.05, 0.03]},
                                      "count_accuracy_minus_tiny": "-"}}},
               "test a minus random": {"mean_score": [0.046, [0.012, 0.079]]}}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    report = figures.report_from_evaluations({"validation": {"a": f"{path}#runs/a/val"}}, baseline="tiny")
    assert report["models"] == ["tiny", "a"] and "n" not in report["validation"]
    assert report["validation"]["compared"]["a"] == {
        "event_recall": {"difference": 0.054, "interval": [0.027, 0.082]},
        "order_accuracy": {"difference": -0.01, "interval": [-0.05, 0.03]}}
    with pytest.raises(ValueError, match="no paired difference against 'tiny'"):  # minus random, not minus tiny
        figures.paired_differences(f"{path}#test a minus random", "tiny")
    base, differences, stated = figures.paired_differences(f"{path}#test a minus random", "random")
    assert differences == {"mean_score": {"difference": 0.046, "interval": [0.012, 0.079]}} and stated == {}
