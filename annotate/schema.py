"""The annotation database's schema, as an ordered list of migrations.

``PRAGMA user_version`` records how many have run; ``Store`` applies the missing ones in
one transaction when it opens a database, and refuses a database newer than this code.
Assignments, rankings, ranking entries and undos are insert-only (triggers refuse UPDATE
and DELETE); ``open_assignments`` is the mutable work queue and ``tasks.votes`` a counter
kept in the same transaction as each vote (and each undo). Migrations run with foreign keys
off, so one may rebuild a table others reference (SQLite's way to drop a constraint); the
store checks every foreign key before it commits.
"""

from __future__ import annotations


def _insert_only(table: str) -> tuple[str, ...]:
    return tuple(
        f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} are insert-only'); END"
        for action in ("UPDATE", "DELETE")
    )


# Ordered schema migrations: migration i brings the database to PRAGMA user_version i + 1.
# Append new migrations; never edit a released one.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE prompts (
            id INTEGER PRIMARY KEY,
            text TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE candidates (
            id INTEGER PRIMARY KEY,
            public_id TEXT NOT NULL UNIQUE,   -- the only id annotators see: random, says nothing
            prompt_id INTEGER NOT NULL REFERENCES prompts(id),
            model TEXT NOT NULL,
            seed INTEGER NOT NULL,
            steps INTEGER NOT NULL,
            guidance REAL NOT NULL,
            sha256 TEXT NOT NULL,             -- names the audio file: audio/<sha[:2]>/<sha>.wav
            duration_s REAL NOT NULL,
            sample_rate INTEGER NOT NULL,
            auto_score REAL,                  -- judge/CLAP score, higher = better; NULL if none
            created_at REAL NOT NULL,
            UNIQUE (prompt_id, model, seed, steps, guidance)
        )""",
        """CREATE TABLE tasks (
            id INTEGER PRIMARY KEY,
            prompt_id INTEGER NOT NULL REFERENCES prompts(id),
            candidate_key TEXT NOT NULL UNIQUE,  -- sorted candidate ids: one clip set is one task
            target_overlap INTEGER NOT NULL CHECK (target_overlap >= 1),
            votes INTEGER NOT NULL DEFAULT 0,    -- non-skip votes; kept by submit() in the vote's transaction
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE task_candidates (
            task_id INTEGER NOT NULL REFERENCES tasks(id),
            candidate_id INTEGER NOT NULL REFERENCES candidates(id),
            PRIMARY KEY (task_id, candidate_id)
        )""",
        """CREATE TABLE annotators (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE assignments (
            id INTEGER PRIMARY KEY,
            task_id INTEGER NOT NULL REFERENCES tasks(id),
            annotator_id INTEGER NOT NULL REFERENCES annotators(id),
            shown_order TEXT NOT NULL,        -- JSON list of public clip ids, in the order shown
            assigned_at REAL NOT NULL,
            UNIQUE (task_id, annotator_id)
        )""",
        # Work in progress: an assignment stays here until its vote (or skip) arrives.
        """CREATE TABLE open_assignments (
            assignment_id INTEGER PRIMARY KEY REFERENCES assignments(id),
            task_id INTEGER NOT NULL REFERENCES tasks(id),
            annotator_id INTEGER NOT NULL REFERENCES annotators(id),
            assigned_at REAL NOT NULL
        )""",
        "CREATE INDEX open_assignments_by_task ON open_assignments (task_id, assigned_at)",
        "CREATE INDEX open_assignments_by_annotator ON open_assignments (annotator_id)",
        """CREATE TABLE rankings (
            id INTEGER PRIMARY KEY,
            assignment_id INTEGER NOT NULL UNIQUE REFERENCES assignments(id),
            all_bad INTEGER NOT NULL CHECK (all_bad IN (0, 1)),
            skipped INTEGER NOT NULL CHECK (skipped IN (0, 1)),
            time_spent_s REAL,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE ranking_entries (
            ranking_id INTEGER NOT NULL REFERENCES rankings(id),
            candidate_id INTEGER NOT NULL REFERENCES candidates(id),
            rank INTEGER CHECK (rank IS NULL OR rank >= 1),  -- NULL for a skip or all-bad vote
            play_count INTEGER CHECK (play_count IS NULL OR play_count >= 0),
            PRIMARY KEY (ranking_id, candidate_id)
        )""",
        """CREATE TABLE exports (
            id INTEGER PRIMARY KEY,
            out_dir TEXT NOT NULL,
            strategy TEXT NOT NULL,
            pairs INTEGER NOT NULL,
            rankings INTEGER NOT NULL,
            alpha REAL,
            fingerprint TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        *_insert_only("assignments"),
        *_insert_only("rankings"),
        *_insert_only("ranking_entries"),
    ),
    (
        # Gold tasks: tasks whose correct ranking is known (a ground-truth render against clips
        # of other prompts). `answer` is a JSON object: public clip id -> dense rank, 1 = best.
        """CREATE TABLE gold_tasks (
            task_id INTEGER PRIMARY KEY REFERENCES tasks(id),
            answer TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        *_insert_only("gold_tasks"),
        # An optional free-text comment with each vote (NULL: none given).
        "ALTER TABLE rankings ADD COLUMN comment TEXT",
    ),
    (
        # Tasks taken out of assignment for good because a clip of theirs could not be read (a file
        # missing or unreadable on disk); the votes already cast on them stay.
        """CREATE TABLE withdrawn_tasks (
            task_id INTEGER PRIMARY KEY REFERENCES tasks(id),
            reason TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        *_insert_only("withdrawn_tasks"),
    ),
    (
        # The latent a clip was decoded from is kept beside its audio (<sha>.latent.npy); this names the
        # latent space it belongs to (the model's VAE and scaling), NULL for clips stored without one.
        "ALTER TABLE candidates ADD COLUMN latent_fingerprint TEXT",
    ),
    (
        # Undo: a vote is never rewritten; a row in `vote_undos` supersedes it, and the assignment may then
        # hold a new vote. `rankings` loses UNIQUE (assignment_id) for that, rebuilt as SQLite rebuilds a table,
        # with the rule kept by a trigger: an assignment holds at most one vote that is not undone.
        """CREATE TABLE rankings_rebuilt (
            id INTEGER PRIMARY KEY,
            assignment_id INTEGER NOT NULL REFERENCES assignments(id),
            all_bad INTEGER NOT NULL CHECK (all_bad IN (0, 1)),
            skipped INTEGER NOT NULL CHECK (skipped IN (0, 1)),
            time_spent_s REAL,
            created_at REAL NOT NULL,
            comment TEXT
        )""",
        """INSERT INTO rankings_rebuilt (id, assignment_id, all_bad, skipped, time_spent_s, created_at, comment)
           SELECT id, assignment_id, all_bad, skipped, time_spent_s, created_at, comment FROM rankings""",
        "DROP TABLE rankings",
        "ALTER TABLE rankings_rebuilt RENAME TO rankings",
        "CREATE INDEX rankings_by_assignment ON rankings (assignment_id)",
        *_insert_only("rankings"),
        """CREATE TABLE vote_undos (
            ranking_id INTEGER PRIMARY KEY REFERENCES rankings(id),
            created_at REAL NOT NULL
        )""",
        *_insert_only("vote_undos"),
        """CREATE TRIGGER rankings_one_standing_vote BEFORE INSERT ON rankings
           WHEN EXISTS (SELECT 1 FROM rankings r WHERE r.assignment_id = NEW.assignment_id
                        AND r.id NOT IN (SELECT ranking_id FROM vote_undos))
           BEGIN SELECT RAISE(ABORT, 'an assignment holds one standing vote: undo it first'); END""",
    ),
    (
        # who gave a clip its auto_score (JudgeRanker, ClapRanker, a PreferenceModel's weights: their `identity`),
        # so that a replaced ranker's scores are recomputed; NULL for scores stored before it was recorded
        "ALTER TABLE candidates ADD COLUMN auto_scorer TEXT",
    ),
    (
        # How long each clip of a vote could have been heard (from the app's play events and their timing) and
        # whether that was enough for the vote to count (Store.min_heard_fraction); NULL: not measured (the CLI).
        "ALTER TABLE ranking_entries ADD COLUMN heard_s REAL",
        "ALTER TABLE rankings ADD COLUMN heard INTEGER CHECK (heard IN (0, 1))",
        # --reveal-models: the tasks whose models were shown to an annotator; never assigned again, so that
        # what one name learned cannot serve another (Store.reveal).
        """CREATE TABLE revealed_tasks (
            task_id INTEGER NOT NULL REFERENCES tasks(id),
            annotator_id INTEGER NOT NULL REFERENCES annotators(id),
            created_at REAL NOT NULL,
            PRIMARY KEY (task_id, annotator_id)
        )""",
        *_insert_only("revealed_tasks"),
    ),
    (
        # Who sent a task from the Demo (keyed hashes of their gradio session and address): they know its clips'
        # models, so the task is never given to them (Store.next_task) and stays out of the verdict unless asked.
        """CREATE TABLE task_senders (
            task_id INTEGER NOT NULL REFERENCES tasks(id),
            sender TEXT NOT NULL,
            PRIMARY KEY (task_id, sender)
        )""",
    ),
    (
        # A withdrawn task whose clips are back is handed out again (Store.reinstate_readable): its row goes.
        "DROP TRIGGER withdrawn_tasks_no_delete",
    ),
]
