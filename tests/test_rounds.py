"""python train_rounds.py: generate -> rank -> train -> evaluate, each round from the last round's model, resumable."""

import json

import train_rounds as rounds
from datasets import load_dataset


def test_rounds_start_from_the_previous_model_and_resume_where_they_stopped(tmp_path):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # a fresh process's state, whatever earlier tests trained with
    out = tmp_path / "rounds"
    argv = ["--model", "tiny", "--rounds", "2", "--prompts", "3", "--k", "2", "--min-margin", "0", "--steps", "3",
            "--eval-n", "2", "--batch-size", "4", "--out", str(out),
            "--train-args", "--max_train_steps 2 --train_batch_size 2 --judge_prompts 1 --judge_steps 3 "
                            "--learning_rate 1e-4"]
    assert rounds.main(argv) == 0
    table = json.loads((out / "rounds.json").read_text())
    assert [row["round"] for row in table] == [0, 1, 2] and table[0]["model"] == "tiny"
    assert all(row["pairs"] == 3 and row["train_steps"] == 2 for row in table[1:])
    assert all(0 <= row["mean_score"] <= 1 for row in table)
    # Round 2's candidates come from round 1's tuned model (the pipeline its validation kept).
    assert table[1]["model"] == str(out / "round-1" / "model" / "best")
    pairs = load_dataset(str(out / "round-2" / "pairs"), split="train")
    assert set(pairs["chosen_model"]) == {table[1]["model"]}
    assert "| 2 |" in (out / "rounds.md").read_text() and (out / "rounds.png").stat().st_size > 1000

    # Rerun after a kill that lost round 2's evaluation: only that stage runs again.
    trained = (out / "round-2" / "model" / "train_metrics.json").stat().st_mtime_ns
    (out / "round-2" / "eval.json").unlink()
    assert rounds.main(argv) == 0
    assert (out / "round-2" / "model" / "train_metrics.json").stat().st_mtime_ns == trained
    assert json.loads((out / "rounds.json").read_text()) == table
