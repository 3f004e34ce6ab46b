"""``python -m annotate``: stats, export and push from the command line."""

from __future__ import annotations

import json
import sqlite3

import pytest

from annotate import Store
from annotate.__main__ import main
from tests.annotate_helpers import make_tasks, vote
from tests.test_annotate_export import files_in


@pytest.fixture
def data_dir(tmp_path):
    store = Store(tmp_path / "data", target_overlap=2)
    make_tasks(store, 3, clips=3)
    for name in ("ann", "bob"):
        for _ in range(3):
            vote(store, name)
    vote(store, "cat", (3, 2, 1))
    vote(store, "cat", skip=True)
    return tmp_path / "data"


def test_stats_reports_tasks_votes_and_agreement(data_dir, capsys):
    assert main(["stats", "--data-dir", str(data_dir), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["tasks"], stats["votes"], stats["skipped"]) == (3, 8, 1)
    assert stats["annotators"]["ann"]["votes"] == 3 and stats["annotators"]["cat"]["skipped"] == 1
    assert main(["stats", "--data-dir", str(data_dir)]) == 0
    table = capsys.readouterr().out
    assert "Krippendorff's alpha (ordinal)" in table and "ann" in table


def test_export_then_push_the_latest_export(data_dir, tmp_path, capsys, monkeypatch):
    assert main(["export", "--data-dir", str(data_dir), "--out", str(tmp_path / "export")]) == 0
    assert "pairs" in capsys.readouterr().out
    assert (tmp_path / "export" / "README.md").is_file()

    pushed = {}
    monkeypatch.setattr("annotate.export.push_to_hub", lambda folder, repo, **kw: pushed.update(folder=folder, repo=repo))
    assert main(["push", "--data-dir", str(data_dir), "--repo", "me/prefs"]) == 0
    assert pushed == {"folder": str((tmp_path / "export").resolve()), "repo": "me/prefs"}


def test_cli_errors_are_one_line_and_exit_2(data_dir, tmp_path, capsys, monkeypatch):
    assert main(["push", "--data-dir", str(data_dir), "--repo", "me/prefs"]) == 2
    assert "nothing exported yet" in capsys.readouterr().err

    monkeypatch.setattr("annotate.export.get_token", lambda: None)
    main(["export", "--data-dir", str(data_dir), "--out", str(tmp_path / "export")])
    assert main(["push", "--data-dir", str(data_dir), "--repo", "me/prefs"]) == 2
    assert "HF_TOKEN" in capsys.readouterr().err

    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    assert main(["pool", "--data-dir", str(data_dir), "--prompts", str(empty)]) == 2
    assert "`prompts` is empty" in capsys.readouterr().err


def test_gold_tasks_and_the_verdict_from_the_command_line(data_dir, tmp_path, capsys):
    prompts = tmp_path / "gold.txt"
    prompts.write_text("# gold\ntwo knocks\na hiss then a click\n")
    # this store's tones last 0.1 s, shorter than a prompt's events: the gold clips get the model's length
    assert main(["gold", "--data-dir", str(data_dir), "--prompts", str(prompts), "--duration", "3.84"]) == 0
    assert "2 gold tasks ready" in capsys.readouterr().out
    assert len(Store(data_dir).gold_answers()) == 2

    assert main(["verdict", "--data-dir", str(data_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["model"] for row in rows} == {"base", "dpo"}
    assert all(set(row) == {"model", "win_rate", "win_rate_interval", "bt_score", "bt_interval", "comparisons"}
               for row in rows)
    assert main(["verdict", "--data-dir", str(data_dir), "--source", "auto"]) == 0
    assert "no comparisons between models yet" in capsys.readouterr().out

    prompts.write_text("a dog barks\n")
    assert main(["gold", "--data-dir", str(data_dir), "--prompts", str(prompts)]) == 2
    assert "unknown word 'dog'" in capsys.readouterr().err


def test_export_never_writes_over_the_data_folder_or_other_files(data_dir, tmp_path, capsys):
    """Bar: `export --data-dir D --out D`, or --out at a folder of other files or at a file, leaves every file
    where it was and exits non-zero with a one-line reason."""
    others = tmp_path / "others"
    others.mkdir()
    (others / "keep.txt").write_text("mine")
    before, votes = files_in(tmp_path), Store(data_dir).rankings()
    for out_dir in (data_dir, others, others / "keep.txt", data_dir / "audio"):
        assert main(["export", "--data-dir", str(data_dir), "--out", str(out_dir)]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: refusing to write the export to {out_dir}: ") and error.count("\n") == 1
    assert files_in(tmp_path) == before and Store(data_dir).rankings() == votes


def test_commands_on_an_empty_data_folder_create_no_file(tmp_path, capsys):
    """Bar: `stats --data-dir EMPTY` creates no file; nor does any refused command (an empty store there would
    stop the app's Hub restore)."""
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    blank, dog, nowhere = tmp_path / "blank.txt", tmp_path / "dog.txt", str(tmp_path / "no-such-file")
    blank.write_text("# nothing\n")
    dog.write_text("a dog barks\n")
    commands = [["stats"], ["stats", "--json"], ["verdict"], ["export", "--out", str(tmp_path / "out")],
                ["push", "--repo", "me/prefs"], ["pool", "--prompts", str(blank)], ["pool", "--prompts", nowhere],
                ["pool", "--prompts", str(dog), "--k", "9"], ["gold", "--prompts", nowhere],
                ["gold", "--prompts", str(dog)], ["gold", "--prompts", str(dog), "--distractors", "0"]]
    for folder in (empty, missing, missing / "sub"):  # issue 31: a refused pool on missing/sub left missing/
        for name, *options in commands:
            assert main([name, "--data-dir", str(folder), *options]) == 2, name
            error = capsys.readouterr().err
            assert error.startswith("error: ") and error.count("\n") == 1, error
            if name in ("stats", "verdict", "export"):
                assert f"no annotation store in {folder}" in error
        assert not missing.exists() and list(empty.iterdir()) == []
    assert not (tmp_path / "out").exists()


def test_cli_refusals_are_one_line(data_dir, tmp_path, capsys):
    for command in ("export", "verdict"):
        extra = ["--out", str(tmp_path / "out")] if command == "export" else []
        assert main([command, "--data-dir", str(data_dir), "--min-gold-accuracy", "2", *extra]) == 2
        assert capsys.readouterr().err == "error: `min_gold_accuracy` must be within 0..1, got 2.0\n"
    assert not (tmp_path / "out").exists()

    with sqlite3.connect(data_dir / "annotate.sqlite") as db:
        db.execute("PRAGMA user_version = 99")
    assert main(["stats", "--data-dir", str(data_dir)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "has schema version 99; this code knows up to" in error
