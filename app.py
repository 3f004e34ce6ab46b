"""Tango DPO Studio: hear the base model and its DPO-tuned version side by side, rank clips blind,
export the rankings as a preference dataset.

    python app.py                                    # tiny / tiny-dpo, store in ./data, http://127.0.0.1:7860
    python app.py --dpo-model runs/my-dpo --admins me --auth-file users.txt --port 7861
    python app.py --base-model declare-lab/tango --dpo-model declare-lab/tango2 --hub-dataset me/prefs

Every flag has an environment variable (``python app.py --help``). Handlers are plain module
functions taking the ``Studio`` first (bound with ``bind``), so a test calls them without a
server; they only translate between widgets and ``studio`` (which holds the logic). The UI is
declared in ``build_app`` and its ``*_tab`` helpers, which also wire the events.
"""

import functools
import inspect
import logging
import os
import signal
import socket
import sqlite3
import sys
from pathlib import Path

from studio.config import StudioConfig, device_refusal, parse_config


def check_port_free(host: str, port: int) -> None:
    """Exit with a clear message when another program (a second app?) already serves on ``port``.

    The probe binds as the server will (uvicorn sets SO_REUSEADDR), so the TIME_WAIT connections a killed
    server leaves behind for a minute do not read as "in use"; a socket listening on the port still does."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            sys.exit(f"error: port {port} on {host} is in use (is another `python app.py` running?): "
                     f"start this one with --port {port + 1} (or set GRADIO_SERVER_PORT)")


def checked_config(argv) -> StudioConfig:
    """The configuration from flags and environment, once the port and the device are known to be usable;
    otherwise exit with the reason in one line."""
    config = parse_config(argv)
    if config.reward_model is not None:  # a planted or damaged folder: refused before the models load
        from preference.reward import check_preference_folder
        from annotate.validation import InvalidInput

        try:
            check_preference_folder(config.reward_model)
        except InvalidInput as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
    check_port_free(config.host, config.port)
    refusal = device_refusal(config.device, config.dtype)
    if refusal:
        sys.exit(f"error: {refusal}")
    return config


if __name__ == "__main__":
    # Checked before gradio loads: --help, a wrong flag or a busy port answer in a second, a bad device in a few.
    checked_config(sys.argv[1:])

import gradio as gr  # noqa: E402
import torch  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from annotate.validation import UnusableModelFolder  # noqa: E402
from studio.state import START_REFUSALS, Studio  # noqa: E402
from studio.admin import (ANNOTATOR_COLUMNS, NO_TASKS_HINT, PREVIEW_PAIRS, PairPreview, dataset_overview,  # noqa: E402
                          describe_export, describe_pool, export_dataset, export_download, export_preview, hub_url,
                          leaderboard, make_pool, push_dataset, require_admin, results_forest, results_markdown)
from studio.annotation import (GUIDELINES, LABELS, MAX_SHOWN_CLIPS, RANKING_VERDICTS, SHORTCUTS,  # noqa: E402
                               VERDICT_NAMES, ShownTask)
from studio.calls import ArgumentCount, RequestLimits, endpoint_arguments  # noqa: E402
from studio.generation import (MAX_CANDIDATES, MODEL_DEFAULT, SAMPLERS, Generation,  # noqa: E402
                               GenerationSettings, duration_note, duration_range, evaluation_line, example_prompts,
                               prompt_hint)
from studio.identity import IdentityError, LoginAddress, password_check  # noqa: E402
from studio.limits import generation_threads, visitor_of  # noqa: E402

logger = logging.getLogger("app")

ANNOTATION_CONCURRENCY = 16  # events at once per annotation endpoint; generation runs one at a time per device

# Keyboard shortcuts on the Annotate tab (inactive while typing in a text field).
SHORTCUTS_JS = """
<script>
// One clip at a time: starting a player pauses every other one (clicks and keys alike).
document.addEventListener("play", (event) => {
  document.querySelectorAll("audio, video").forEach((media) => { if (media !== event.target) media.pause(); });
}, true);
(() => {
  let current = "a";
  const visible = (el) => el && el.offsetParent !== null;
  // Buttons, by key; a hidden one (the A/B buttons of a ranking, Vote of an A/B task) does nothing.
  const buttons = {enter: "#vote-button", x: "#all-bad-button", s: "#skip-button",
                   arrowleft: "#ab-a-button", arrowright: "#ab-b-button", t: "#ab-tie-button"};
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type !== "radio"))) return;
    if (!visible(document.querySelector("#skip-button"))) return;  // Skip always shows on the Annotate tab
    const key = event.key.toLowerCase();
    if (key.length === 1 && key >= "a" && key <= "h" && visible(document.querySelector(`#clip-${key}`))) {
      current = key;
      const play = document.querySelector(`#clip-${key} button[aria-label="Play"], #clip-${key} .play-pause-button`);
      if (play) play.click();
      event.preventDefault();
    } else if (key >= "1" && key <= "8") {
      const option = document.querySelector(`#rank-${current} input[value="${key}"]`);
      if (option && visible(document.querySelector(`#rank-${current}`))) { option.click(); event.preventDefault(); }
    } else if (key in buttons && visible(document.querySelector(buttons[key]))) {
      document.querySelector(buttons[key]).click(); event.preventDefault();
    }
  });
})();
</script>
"""


SUMMARY_HEIGHT_PX = 84
# Refusals (toasts) at the bottom left: top right, gradio's place, they covered the rank controls (the right column).
TOASTS_CSS = ".toast-wrap { top: auto !important; bottom: var(--size-4); left: var(--size-3) !important; " \
             "right: auto !important; align-items: start !important; }"

# After a vote is stored: the refusal toasts of earlier tries ("give every clip a rank; missing: ...") go away.
DISMISS_TOASTS = "() => document.querySelectorAll('.toast-close').forEach((button) => button.click())"


STORE_TROUBLE = "The annotation store could not answer just now (nothing was changed): try again in a few seconds."


def visible_errors(handler):
    """Bad input and refused actions (ValueError: InvalidVote, GenerationError, IdentityError, ...;
    OSError: a failed push) reach the user as a gr.Error message instead of a server error; they are
    expected, so the server logs one line, not a traceback. A database error (locked, I/O) becomes a
    "try again" message, its trace goes to the log."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except sqlite3.Error as err:
            logger.exception("store error in %s", handler.__name__)
            raise gr.Error(STORE_TROUBLE) from err
        except (ValueError, OSError) as err:
            logger.info("refused %s: %s", handler.__name__, err)
            raise gr.Error(without_paths(err), print_exception=False) from None

    return wrapped


def without_paths(err: Exception) -> str:
    """An error's message as users read it: a file error's reason without the server's file names (the log
    has them)."""
    if isinstance(err, OSError) and (err.filename or err.filename2):
        return f"{err.strerror or type(err).__name__} (a file on the server; the log names it)"
    return str(err)


def bind(handler, *state):
    """``handler`` with its leading state arguments (the Studio, ...) filled in, as gradio must see a handler:
    a function whose signature, type hints (API schema, gr.Request, gr.Progress) and docstring are the rest.
    (A bare functools.partial hides the type hints from gradio.)"""
    signature = inspect.signature(handler)
    filled = list(signature.parameters)[:len(state)]

    def bound(*args, **kwargs):
        return handler(*state, *args, **kwargs)

    bound.__signature__ = signature.replace(parameters=list(signature.parameters.values())[len(state):])
    bound.__annotations__ = {k: v for k, v in handler.__annotations__.items() if k not in filled}
    bound.__name__ = bound.__qualname__ = handler.__name__
    bound.__doc__ = handler.__doc__
    return bound


def who(studio: Studio, typed: str | None, request: gr.Request | None, profile: gr.OAuthProfile | None) -> str:
    return studio.who(typed, getattr(request, "username", None), profile.username if profile else None)


def visitor(studio: Studio, request: gr.Request | None) -> str:
    """Who the per-visitor generation limits count (``studio.limits.visitor_of``)."""
    if request is None:
        return "local"
    return visitor_of(getattr(request, "username", None), getattr(request.client, "host", None),
                      request.headers.get("x-forwarded-for"), studio.config.trust_proxy)


def as_sent(component):
    """``component`` (a gr.Number, gr.Slider or gr.Textbox) hands its value to the handler as sent, so the handler
    checks it and names the field: gr.Number would round 2.5 to 2 silently and answer "abc" with an error that
    says nothing; gr.Slider would refuse 0 (a documented duration) by its own range; gr.Textbox would turn 5 or
    {"name": "x"} into a name. (An instance override: a subclass would be a custom component the browser does
    not know.)"""
    component.preprocess = lambda payload: payload
    return component


# ---------------------------------------------------------------------------------------------- Demo handlers

@visible_errors
def generate(studio: Studio, prompt: str, steps: float, guidance: float, seed: float, candidates: float,
             sampler: str = MODEL_DEFAULT, duration: float | None = None, request: gr.Request = None,
             progress=gr.Progress()):
    """Both models on the same prompt, seeds and settings: (base WAVs, DPO WAVs or None, details, Generation).
    duration: seconds per clip (optional; 0 or none: each model's own length)."""
    shortest, _, longest = duration_range(studio.models)
    settings = GenerationSettings.checked(prompt, steps, guidance, seed, candidates, sampler, duration,
                                          max_steps=studio.config.max_steps,
                                          max_candidates=studio.config.max_candidates, durations=(shortest, longest))
    with studio.gate.admit(visitor(studio, request)):
        generation = studio.generate(settings, progress=lambda fraction, desc: progress(fraction, desc=desc))
    files = [[clip.audio_path for clip in column.clips] or None for column in generation.columns]
    return files[0], files[1], generation.as_dict(), generation


def generate_on_page(studio: Studio, prompt: str, steps: float, guidance: float, seed: float, candidates: float,
                     sampler: str = MODEL_DEFAULT, duration: float | None = None, request: gr.Request = None,
                     progress=gr.Progress()):
    """The Generate button: /generate's work, but a refusal or failure comes back as text for the columns (shown in
    place by ``show_generation``) instead of a toast: (Generation or None, error message or "")."""
    try:
        return generate(studio, prompt, steps, guidance, seed, candidates, sampler, duration, request, progress)[3], ""
    except gr.Error as err:
        return None, err.message


def clear_generation(studio: Studio):
    """While a new generation runs: the previous prompt's players, spectrograms, messages and Generation go away,
    and Generate is disabled until it ends (a click meanwhile would otherwise be dropped unseen)."""
    hidden = [gr.update(value=None, visible=False)] * (3 * MAX_CANDIDATES * len(studio.models))
    summaries = [f"{model.status()}: generating ..." if model.pipe is not None else model.status()
                 for model in studio.models]
    return ("", *summaries, *hidden, gr.update(interactive=False), "",
            gr.update(interactive=False, value="Generating ..."), None)


def show_generation(studio: Studio, generation: Generation | None, error: str):
    """Column summaries (each column's judge score), players, spectrograms and what the judge heard in each clip;
    enables "send to annotation" and Generate; above the columns, the prompt and settings the clips were made with.
    A refused or failed generation: the reason in each column, nothing else."""
    generate_again = gr.update(interactive=True, value="Generate")
    if generation is None:
        summaries = [f"**{model.title}** (`{model.spec}`): **not generated**: {error}" for model in studio.models]
        hidden = [gr.update(value=None, visible=False)] * (3 * MAX_CANDIDATES * len(studio.models))
        return "", *summaries, *hidden, gr.update(interactive=False), "", generate_again
    summaries = [column.summary() for column in generation.columns]
    audio_updates, picture_updates, heard_updates = [], [], []
    for column in generation.columns:
        for i in range(MAX_CANDIDATES):
            clip = column.clips[i] if i < len(column.clips) else None
            audio_updates.append(gr.update(value=clip and clip.audio_path, visible=clip is not None))
            picture_updates.append(gr.update(value=clip and clip.spectrogram_path, visible=clip is not None))
            heard_updates.append(gr.update(value=clip and clip.heard(), visible=bool(clip and clip.judged)))
    return (generation.settings.made_with(), *summaries, *audio_updates, *picture_updates, *heard_updates,
            gr.update(interactive=True), "", generate_again)


def asking(studio: Studio, request: gr.Request | None) -> list[str]:
    """Who sends this request, as the store keeps the senders of Demo tasks (``Studio.sender_tokens``): its gradio
    session, its log-in name if any, and its address (a log-in name does not hide the address)."""
    if request is None:
        return studio.sender_tokens(None, visitor(studio, request))
    address = visitor_of(None, getattr(request.client, "host", None), request.headers.get("x-forwarded-for"),
                         studio.config.trust_proxy)
    return studio.sender_tokens(request.session_hash, visitor(studio, request), address)


@visible_errors
def send(studio: Studio, generation: Generation | None, request: gr.Request = None) -> str:
    """The Demo's clips become a ranking task for others: never given to this session or visitor (they heard its
    models), and out of the verdict unless the owner asks (--verdict-demo-tasks)."""
    if generation is None:
        raise ValueError("generate clips first")
    task_id = studio.send_to_annotation(generation, asking(studio, request))
    return f"Task {task_id} is ready on the Annotate tab, for other annotators (you heard its models)."


# ---------------------------------------------------------------------------------------------- Annotate handlers

# The A/B form of a two-clip task: (verdict, button label, element id); "Both bad" is the All bad button renamed.
AB_BUTTONS = (("a_better", "A is better", "ab-a-button"), ("tie", "Tie", "ab-tie-button"),
              ("b_better", "B is better", "ab-b-button"))


def progress_text(studio: Studio, name: str) -> str:
    """The annotator's own view: their votes and the tasks' progress, and their gold accuracy where the owner
    shows it (--show-gold-accuracy)."""
    return studio.annotation.progress(name, show_gold=studio.config.show_gold_accuracy).as_markdown()


@visible_errors
def next_task(studio: Studio, annotator: str, request: gr.Request, profile: gr.OAuthProfile | None):
    """The annotator's open task or a new one: (task JSON, its WAVs in the order shown, ShownTask)."""
    name = who(studio, annotator, request, profile)
    if studio.config.informative_first:  # the order goes by the automatic scores: new clips need theirs
        studio.score_clips()
    task = studio.annotation.next_task(name, asking(studio, request))
    progress = progress_text(studio, name)
    if task is None:
        # A store without tasks is not "done": say where tasks come from.
        message = "no task left for you" if studio.store.counts()["tasks"] else "no tasks yet"
        return {"task_id": None, "message": message, "progress": progress}, None, None
    return {**task.as_dict(), "progress": progress}, task.audio_paths, task


def form_buttons(task: ShownTask | None, all_played: bool):
    """Vote, All bad, the A/B buttons and Skip: a two-clip task shows the A/B buttons (and "Both bad") in place of
    Vote; every verdict but Skip needs every clip played; Skip always works."""
    pair = task is not None and task.is_pair
    return (gr.update(visible=not pair, interactive=all_played),
            gr.update(value="Both bad" if pair else "All bad", interactive=all_played),
            *[gr.update(visible=pair, interactive=all_played)] * len(AB_BUTTONS),
            gr.update(interactive=True))


def show_task(task: ShownTask | None, task_info: dict):
    """Progress, prompt, one player per clip with its rank control (none for an A/B task), the form's buttons, an
    empty comment and the status."""
    if task is None:
        hidden = [gr.update(value=None, visible=False)] * MAX_SHOWN_CLIPS
        said = NO_TASKS_HINT if task_info.get("message") == "no tasks yet" else "**No task left for you.** Thank you!"
        return (task_info["progress"], said, *hidden, *hidden,
                *form_buttons(None, False), "", "")
    count = len(task.clip_ids)
    audio = [gr.update(value=task.audio_paths[i] if i < count else None, visible=i < count)
             for i in range(MAX_SHOWN_CLIPS)]
    ranks = [gr.update(choices=[str(r) for r in range(1, count + 1)], value=None,
                       visible=i < count and not task.is_pair) for i in range(MAX_SHOWN_CLIPS)]
    hint = "Play both clips, then say which is better." if task.is_pair else "Play every clip, then rank them."
    return (task_info["progress"], f"**Prompt:** {task.prompt}", *audio, *ranks,
            *form_buttons(task, task.all_played), "", hint)


def show_next_task(task: ShownTask | None, task_info: dict):
    """After a vote: the next task, leaving the vote's outcome (and any reveal) in the status line."""
    return show_task(task, task_info)[:-1]


@visible_errors
def play_clip(studio: Studio, position: int, annotator: str, task: ShownTask | None, request: gr.Request,
              profile: gr.OAuthProfile | None):
    """The player at ``position`` started: count the play; unlock voting once every clip was played."""
    if task is None or position >= len(task.clip_ids):
        return *form_buttons(task, False), gr.update()
    plays = studio.annotation.record_play(who(studio, annotator, request, profile), task.task_id,
                                          task.clip_ids[position])
    unplayed = [label for label, clip_id in zip(LABELS, task.clip_ids) if not plays.get(clip_id)]
    message = (f"Still to play: {', '.join(unplayed)}" if unplayed else
               "All clips played: which is better?" if task.is_pair else "All clips played: rank them and vote.")
    return *form_buttons(task, not unplayed), message


@visible_errors
def vote_from_form(studio: Studio, verdict: str, annotator: str, task: ShownTask | None, comment: str,
                   request: gr.Request, profile: gr.OAuthProfile | None, *ranks):
    """Vote, All bad, Skip or an A/B button pressed: the ranks chosen in the form (one per shown clip; none for an
    A/B answer) and the comment become the vote; with --reveal-models a ranking is followed by the model behind
    each clip. Skip works whenever a task is assigned, shown on this page or not."""
    if task is None and verdict != "skip":
        raise ValueError("no task loaded: press Next task")
    name = who(studio, annotator, request, profile)
    if task is None:
        return f"Vote {studio.annotation.skip_open_task(name)} stored (skip)."
    ranking = None
    if verdict == "rank":
        missing = [label for label, rank in zip(task.labels, ranks) if not rank]
        if missing:
            raise ValueError(f"give every clip a rank; missing: {', '.join(missing)}")
        ranking = {label: int(rank) for label, rank in zip(task.labels, ranks)}
    vote_id = studio.annotation.vote(name, task.task_id, ranking, verdict, comment=comment)
    message = f"Vote {vote_id} stored ({VERDICT_NAMES[verdict]})."
    if (uncounted := studio.annotation.uncounted(name, task.task_id)) is not None:
        message += f" {uncounted}"
    if studio.config.reveal_models and verdict in RANKING_VERDICTS:
        models, withheld = studio.annotation.reveal_if_private(name, task.task_id)
        message += f" Revealed: {task.revealed(models)}." if models else f" The {withheld}."
    return message


@visible_errors
def played(studio: Studio, annotator: str, task_id: int, clip: str, request: gr.Request,
           profile: gr.OAuthProfile | None) -> dict:
    """Count one play of a clip (its clip_id or letter) of your open task; returns the task's play counts."""
    return studio.annotation.record_play(who(studio, annotator, request, profile), task_id, clip)


@visible_errors
def vote(studio: Studio, annotator: str, task_id: int, ranking: dict | None = None, verdict: str = "rank",
         comment: str | None = None, request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> dict:
    """Vote on your open task: ranking maps clip letters (or clip ids) to ranks, 1 = best, ties allowed;
    verdict 'rank', 'all_bad' or 'skip', or for a two-clip task 'a_better', 'b_better' or 'tie' (all but 'rank'
    with no ranking); an optional comment. Every clip must have been played. The same vote sent again returns
    its vote_id. With --reveal-models the answer to a ranking names the model behind each clip id (`models`) where
    nobody else can be given these clips any more, else says why not (`models_hidden`)."""
    name = who(studio, annotator, request, profile)
    vote_id = studio.annotation.vote(name, task_id, ranking, verdict, comment=comment)
    answer = {"vote_id": vote_id, "progress": progress_text(studio, name)}
    if (uncounted := studio.annotation.uncounted(name, task_id)) is not None:
        answer["not_counted"] = uncounted
    if studio.config.reveal_models and verdict in RANKING_VERDICTS:
        models, withheld = studio.annotation.reveal_if_private(name, task_id)
        answer.update({"models": models} if models else {"models_hidden": withheld})
    return answer


@visible_errors
def undo(studio: Studio, annotator: str, request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> dict:
    """Undo your last vote within a minute of casting it (annotate.store.UNDO_WINDOW_S), unless --reveal-models
    showed you its models or it answered a check task: returns the undone vote_id, its task_id (yours to vote
    again: /next_task gives it back) and your progress. Public results that count it keep it until their next batch."""
    name = who(studio, annotator, request, profile)
    undone = studio.annotation.undo_last_vote(name, reveal_models=studio.config.reveal_models)
    return {"vote_id": undone.id, "task_id": undone.task_id, "progress": progress_text(studio, name)}


def undo_from_form(studio: Studio, annotator: str, request: gr.Request, profile: gr.OAuthProfile | None) -> str:
    """Undo last vote pressed: what was undone (its task loads again next), or a refusal (gr.Error)."""
    undone = undo(studio, annotator, request, profile)
    return f"Vote {undone['vote_id']} undone: its task is back; play its clips and vote again."


def public_leaderboard(studio: Studio) -> list[dict]:
    """Per model, by the lower end of its Bradley-Terry interval: model, win_rate, win_rate_interval, bt_score,
    bt_interval, comparisons, too_few_votes, preliminary (from the human rankings, published in batches; 95 %
    bootstrap intervals; a model in fewer than --min-comparisons comparisons comes last, too_few_votes true and
    its numbers None; preliminary under --preliminary-under comparisons)."""
    return leaderboard(studio.store, studio.config)


def show_results(studio: Studio) -> tuple[str, str]:
    """The Results view: the verdicts in words and tables, models named, and the forest plot of win rates. Clips
    pooled since the last look (``python -m annotate pool`` while the app runs) get their automatic scores first."""
    studio.score_clips()
    return results_markdown(studio.store, studio.config), results_forest(studio.store, studio.config)


# ---------------------------------------------------------------------------------------------- Dataset handlers

def admin_name(studio: Studio, typed: str | None, request: gr.Request | None, profile: gr.OAuthProfile | None) -> str:
    name = who(studio, typed, request, profile)
    require_admin(name, studio.config)
    return name


def show_pairs(studio: Studio, title: str, pairs: list[PairPreview]) -> list:
    """The pair preview's title and, per row, what was preferred over what with the votes and both clips to play
    (copies, see studio.serving); rows without a pair are hidden. With no title, all of it is hidden."""
    updates = [gr.update(visible=bool(title), value=title)]
    for i in range(PREVIEW_PAIRS):
        pair = pairs[i] if i < len(pairs) else None
        updates += [
            gr.update(visible=pair is not None, value=pair and (
                f"**{pair.prompt}**: `{pair.chosen_model}` preferred over `{pair.rejected_model}` "
                f"({pair.votes_for} vs {pair.votes_against} votes)")),
            gr.update(visible=pair is not None, value=pair and studio.clip_server.serve(pair.chosen_audio)),
            gr.update(visible=pair is not None, value=pair and studio.clip_server.serve(pair.rejected_audio)),
        ]
    return updates


def show_dataset(studio: Studio, admin: str, request: gr.Request, profile: gr.OAuthProfile | None):
    """Counts, agreement, the verdict and gold accuracy as markdown, the per-annotator table, and the strongest
    pairs with audio; a refusal (not an admin) is said in place of the overview."""
    try:
        admin_name(studio, admin, request, profile)
    except ValueError as err:
        return f"**Not shown:** {err}", [], *show_pairs(studio, "", [])
    studio.score_clips()  # clips pooled from the command line since the last look
    overview = dataset_overview(studio.store, studio.config)
    return (f"{overview.as_markdown()}\n\n{studio.ranker_summary()}", overview.annotator_rows(),
            *show_pairs(studio, "**Strongest pairs so far** (largest majorities of all votes)",
                        overview.preview))


@visible_errors
def export(studio: Studio, admin: str = "", request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> dict:
    """Admins only: write the human-ranked pairs to <data dir>/export; returns what was written."""
    admin_name(studio, admin, request, profile)
    result = export_dataset(studio.store, studio.config)
    return {"export_id": result.export_id, "pairs": result.summary.rows, "folder": str(result.out_dir),
            "alpha": result.alpha, "message": describe_export(result)}


@visible_errors
def push(studio: Studio, admin: str = "", request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> dict:
    """Admins only: upload the latest export to the configured Hub dataset repo."""
    admin_name(studio, admin, request, profile)
    url = push_dataset(studio.store, studio.config)
    return {"url": url, "message": f"Pushed the latest export to [{url}]({url})."}


@visible_errors
def export_to_download(studio: Studio, admin: str, request: gr.Request, profile: gr.OAuthProfile | None):
    """Admins only: export, then (what was written, the export as a zip, its first pairs)."""
    admin_name(studio, admin, request, profile)
    result = export_dataset(studio.store, studio.config)
    return (describe_export(result), str(export_download(result, studio.generated_dir / "downloads")),
            export_preview(studio.store, result.out_dir))


def export_on_page(studio: Studio, admin: str, request: gr.Request, profile: gr.OAuthProfile | None):
    """Export pressed: what was written, the zip to download and the export's first pairs with audio; or why not,
    in place, with the download and the preview hidden (a refused visitor gets neither)."""
    try:
        message, download, pairs = export_to_download(studio, admin, request, profile)
    except gr.Error as err:
        return f"**Export failed:** {err.message}", gr.update(visible=False, value=None), *show_pairs(studio, "", [])
    return (message, gr.update(visible=True, value=download),
            *show_pairs(studio, "**First pairs of the export**, as the zip holds them", pairs))


@visible_errors
def make_tasks(studio: Studio, admin: str, prompts: str, k: float, request: gr.Request,
               profile: gr.OAuthProfile | None) -> dict:
    """Admins only: k clips per prompt per loaded model, one ranking task per prompt (``studio.admin.make_pool``),
    scored by the automatic ranker."""
    admin_name(studio, admin, request, profile)
    if isinstance(k, bool) or not isinstance(k, (int, float)) or k != int(k):
        raise ValueError(f"clips per prompt per model must be a whole number, got {str(k)[:40]!r}")
    with studio.gate.admit(visitor(studio, request)):
        report = make_pool(studio.store, studio.models, prompts, int(k))
    studio.score_clips()
    return {"task_ids": report.task_ids, "message": describe_pool(report)}


def pool_message(studio: Studio, admin: str, prompts: str, k: float, request: gr.Request,
                 profile: gr.OAuthProfile | None,
                 progress=gr.Progress(track_tqdm=True)) -> str:  # shows build_pool's tqdm bar (clips made)
    """Make tasks pressed: how many tasks are ready, or why none, in place; the clips made so far as progress."""
    return outcome(make_tasks, "Making tasks", studio, admin, prompts, k, request, profile)


def push_message(studio: Studio, admin: str, request: gr.Request, profile: gr.OAuthProfile | None) -> str:
    """Push pressed: where it went, or why not, in place."""
    return outcome(push, "Push", studio, admin, request, profile)


def outcome(action, title: str, *args) -> str:
    """An admin action's message, or "**<title> failed:** <reason>" (each replaces the previous outcome)."""
    try:
        return action(*args)["message"]
    except gr.Error as err:
        return f"**{title} failed:** {err.message}"


# ---------------------------------------------------------------------------------------------- layout and wiring

def build_app(studio: Studio) -> gr.Blocks:
    """The whole UI: Demo, Annotate, Results and Dataset tabs, their events and the named API endpoints."""
    with gr.Blocks(title="Tango DPO Studio", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# Tango DPO Studio\nBase model vs its preference-tuned version (Diffusion-DPO or GRPO), blind "
                    "ranking of clips, and the preference dataset they make.")
        with gr.Row():
            if studio.identity_mode == "oauth":
                gr.LoginButton()
            name_box = as_sent(gr.Textbox(label="Your name (annotator)", placeholder="e.g. alice", max_lines=1,
                                          visible=studio.identity_mode == "name", elem_id="annotator-name"))
        with gr.Tab("Demo", id="demo"):
            demo_tab(studio)
        with gr.Tab("Annotate", id="annotate"):
            annotate_tab(studio, name_box)
        with gr.Tab("Results", id="results") as results:
            results_tab(studio, results)
        admins = bool(studio.config.admins)  # without admins nobody may use the tab: it is shown disabled
        with gr.Tab("Dataset" if admins else "Dataset (admins only: start the app with --admins NAME)", id="dataset",
                    interactive=admins) as dataset:
            dataset_tab(studio, name_box, dataset)
    return demo


def demo_tab(studio: Studio) -> None:
    """Prompt and settings, one column per model (players and spectrograms), send to annotation; /generate."""
    models = studio.models
    default_steps = next((m.default_steps for m in models if m.pipe is not None), 100)
    placeholder, vocabulary = prompt_hint(models)
    prompt = gr.Textbox(label="Prompt", placeholder=placeholder, max_lines=2, elem_id="prompt")
    if vocabulary:  # a screen of words: folded, so that the first screen keeps the prompt, settings and Generate
        with gr.Accordion("Which words the embedded models know (any other word is refused)", open=False,
                          elem_id="vocabulary-section"):
            gr.Markdown(vocabulary, elem_id="vocabulary")
    gr.Examples(example_prompts(models), inputs=[prompt], label="Examples")
    shortest, default_length, longest = duration_range(models)
    with gr.Row():
        steps = as_sent(gr.Number(value=min(default_steps, studio.config.max_steps), precision=0,
                                  label=f"Steps (at most {studio.config.max_steps})"))
        guidance = as_sent(gr.Slider(0, 15, value=3.0, step=0.5, label="Guidance"))
        seed = as_sent(gr.Number(value=0, precision=0, label="Seed"))
        candidates = as_sent(gr.Slider(1, studio.config.max_candidates, value=min(2, studio.config.max_candidates),
                                       step=1, label="Candidates per model"))
        sampler = gr.Dropdown(list(SAMPLERS), value=MODEL_DEFAULT, label="Sampler")
        duration = as_sent(gr.Slider(shortest, longest, value=default_length, step=0.01, label="Duration (s)",
                                     info=duration_note(models), elem_id="duration-control", scale=2))
    generate_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
    # One progress bar, between the button and the columns; its text names the model at work.
    generation_progress = gr.Markdown(elem_id="generation-progress", min_height=40)
    made_with = gr.Markdown(elem_id="generation-made-with")  # what the clips below were made with
    column_summaries, players, pictures, heard = [], [], [], []
    with gr.Row():
        for model in models:
            with gr.Column(elem_id=f"column-{model.role}"):
                # Room for three lines in each column, so the players below line up whichever summary is longer.
                column_summaries.append(gr.Markdown(model.status(), elem_id=f"summary-{model.role}",
                                                    min_height=SUMMARY_HEIGHT_PX))
                for i in range(MAX_CANDIDATES):
                    players.append(gr.Audio(label=f"{model.title} #{i + 1}", type="filepath",
                                            interactive=False, visible=False))
                    pictures.append(gr.Image(label="log-mel", type="filepath", interactive=False,
                                             visible=False, height=180))
                    heard.append(gr.Markdown(visible=False, elem_id=f"heard-{model.role}-{i + 1}"))
    gr.Markdown(evaluation_line(models), elem_id="evaluation-line")
    with gr.Row():
        send_button = gr.Button("Send these clips to annotation", interactive=False)
        send_status = gr.Markdown()
    # What /generate returns to API clients; the players above show the same clips.
    base_files = gr.File(file_count="multiple", visible=False, label="base clips")
    dpo_files = gr.File(file_count="multiple", visible=False, label="dpo clips")
    details = gr.JSON(visible=False, label="details")
    api_generate = gr.Button(visible=False)  # /generate: API clients get errors raised, the page gets them in place
    generation_state, generation_error = gr.State(), gr.State("")

    settings = [prompt, steps, guidance, seed, candidates, sampler, duration]
    shown = [made_with, *column_summaries, *players, *pictures, *heard, send_button, send_status, generate_button]
    # The gate (studio.limits) runs one generation at a time and refuses what would queue too long; gradio
    # queues nothing here, so that a request over the limit reaches the gate and is answered at once.
    api_generate.click(bind(generate, studio), settings, [base_files, dpo_files, details, generation_state],
                       api_name="generate", concurrency_limit=None)
    # Clear the previous clips (and disable Generate) first; then generate with the progress bar above the columns;
    # then show the clips or why there are none, and enable Generate again.
    generate_button.click(bind(clear_generation, studio), None, [*shown, generation_state], queue=False,
                          api_visibility="private") \
        .then(bind(generate_on_page, studio), settings, [generation_state, generation_error],
              concurrency_limit=None, show_progress_on=[generation_progress], api_visibility="private") \
        .then(bind(show_generation, studio), [generation_state, generation_error], shown, api_visibility="private")
    send_button.click(bind(send, studio), [generation_state], [send_status], api_visibility="private")


def annotate_tab(studio: Studio, name_box: gr.Textbox) -> None:
    """Guidelines, the blind task (players A, B, ... and their ranks), vote buttons; /next_task, /played, /vote."""
    gr.Markdown(GUIDELINES)
    gr.Markdown(SHORTCUTS)
    progress_md = gr.Markdown(elem_id="annotate-progress")
    next_button = gr.Button("Next task", elem_id="next-task-button")
    task_prompt = gr.Markdown(elem_id="task-prompt")
    clip_players, rank_controls = [], []
    for label in LABELS:
        with gr.Row():
            clip_players.append(gr.Audio(label=f"Clip {label}", type="filepath", interactive=False,
                                         visible=False, elem_id=f"clip-{label.lower()}", scale=3))
            rank_controls.append(gr.Radio([], label=f"Rank of {label} (1 = best)", visible=False,
                                          elem_id=f"rank-{label.lower()}", scale=2))
    with gr.Row():
        vote_button = gr.Button("Vote", variant="primary", interactive=False, elem_id="vote-button")
        ab_buttons = [gr.Button(label, variant="primary", interactive=False, visible=False, elem_id=elem_id)
                      for _, label, elem_id in AB_BUTTONS]
        all_bad_button = gr.Button("All bad", interactive=False, elem_id="all-bad-button")
        skip_button = gr.Button("Skip", elem_id="skip-button")  # always: it skips whatever task is assigned
    comment_box = gr.Textbox(label="Comment (optional)", max_lines=3, elem_id="vote-comment")
    annotate_status = gr.Markdown(elem_id="annotate-status")
    undo_button = gr.Button(f"Undo last vote (within {studio.store.undo_window_s:.0f} s)", size="sm",
                            elem_id="undo-button")
    task_json = gr.JSON(visible=False, label="task")
    task_files = gr.File(file_count="multiple", visible=False, label="task clips")
    task_state = gr.State()

    form = [vote_button, all_bad_button, *ab_buttons, skip_button]  # in form_buttons' order
    task_outputs = [progress_md, task_prompt, *clip_players, *rank_controls, *form, comment_box, annotate_status]
    next_button.click(bind(next_task, studio), [name_box], [task_json, task_files, task_state], api_name="next_task") \
        .success(show_task, [task_state, task_json], task_outputs, api_visibility="private")
    for position, player in enumerate(clip_players):
        player.play(bind(play_clip, studio, position), [name_box, task_state], [*form, annotate_status],
                    api_visibility="private")
    verdicts = [(vote_button, "rank"), (all_bad_button, "all_bad"), (skip_button, "skip"),
                *((button, verdict) for button, (verdict, _, _) in zip(ab_buttons, AB_BUTTONS))]
    changes = [button.click(bind(vote_from_form, studio, verdict), [name_box, task_state, comment_box, *rank_controls],
                            [annotate_status], api_visibility="private") for button, verdict in verdicts]
    changes.append(undo_button.click(bind(undo_from_form, studio), [name_box], [annotate_status],
                                     api_visibility="private"))
    # After a vote or an undo: the next task (after an undo, the undone one), the outcome left in the status line.
    for done in changes:
        done.success(None, js=DISMISS_TOASTS, api_visibility="private")
        done.success(bind(next_task, studio), [name_box], [task_json, task_files, task_state], api_visibility="private") \
            .success(show_next_task, [task_state, task_json], task_outputs[:-1], api_visibility="private")
    gr.api(bind(played, studio), api_name="played", concurrency_limit=ANNOTATION_CONCURRENCY)
    gr.api(bind(vote, studio), api_name="vote", concurrency_limit=ANNOTATION_CONCURRENCY)
    gr.api(bind(undo, studio), api_name="undo", concurrency_limit=ANNOTATION_CONCURRENCY)


def results_tab(studio: Studio, tab: gr.Tab) -> None:
    """Public: which model the rankings prefer (the only place that names the models), shown when the tab opens;
    /leaderboard."""
    results_md = gr.Markdown(elem_id="results")
    forest = gr.HTML(elem_id="results-forest")
    refresh = gr.Button("Refresh results", elem_id="results-refresh")
    for event in (tab.select, refresh.click):
        event(bind(show_results, studio), None, [results_md, forest], api_visibility="private")
    gr.api(bind(public_leaderboard, studio), api_name="leaderboard", concurrency_limit=ANNOTATION_CONCURRENCY)


def dataset_tab(studio: Studio, name_box: gr.Textbox, tab: gr.Tab) -> None:
    """Admins only: overview (shown when the tab opens), annotator table, Export (with its zip to download) and Push,
    Make tasks, the strongest pairs or the export's first ones with audio; /export, /push."""
    gr.Markdown("For admins: the names given to `--admins NAME` (or `TANGO_ADMINS`) when the app starts, "
                + ("as their log-in name" if studio.identity_mode != "name" else "typed as the name above")
                + ". " + (f"Hub dataset: [{studio.config.hub_dataset}]({hub_url(studio.config.hub_dataset)})"
                           if studio.config.hub_dataset else "No Hub dataset configured (--hub-dataset)."))
    refresh_button = gr.Button("Show dataset", elem_id="dataset-refresh")
    overview_md = gr.Markdown(elem_id="dataset-overview")
    annotators_table = gr.Dataframe(headers=ANNOTATOR_COLUMNS, interactive=False, label="Annotators")
    with gr.Row():
        export_button = gr.Button("Export", elem_id="export-button")
        push_button = gr.Button("Push to the Hub", elem_id="push-button", interactive=bool(studio.config.hub_dataset))
    admin_outcome = gr.Markdown(elem_id="admin-outcome")
    with gr.Accordion("Make ranking tasks (a pool)", open=False, elem_id="pool-section"):
        gr.Markdown("Each prompt gets that many clips from each loaded model and one ranking task, on the Annotate "
                    "tab (as `python -m annotate pool` makes them). Prompts: one per line, as in a prompts file (blank "
                    "lines and `#` comments ignored); the Demo's examples to start with.")
        pool_prompts = gr.Textbox("\n".join(example_prompts(studio.models)), label="Prompts", lines=6, max_lines=20,
                                  elem_id="pool-prompts")
        pool_k = as_sent(gr.Slider(1, 4, value=2, step=1, label="Clips per prompt per model", elem_id="pool-k"))
        pool_button = gr.Button("Make tasks", elem_id="pool-button")
        pool_outcome = gr.Markdown(elem_id="pool-outcome")
    download_button = gr.DownloadButton("Download the export (zip: parquet + card)", visible=False,
                                        elem_id="export-download")
    preview = [gr.Markdown(visible=False, elem_id="pairs-title")]  # then per pair: what over what, chosen, rejected
    for i in range(PREVIEW_PAIRS):
        with gr.Row(elem_id=f"pair-{i}"):
            preview += [gr.Markdown(visible=False),
                        gr.Audio(label="chosen", type="filepath", interactive=False, visible=False),
                        gr.Audio(label="rejected", type="filepath", interactive=False, visible=False)]

    for event in (tab.select, refresh_button.click):
        event(bind(show_dataset, studio), [name_box], [overview_md, annotators_table, *preview],
              api_visibility="private")
    export_button.click(bind(export_on_page, studio), [name_box], [admin_outcome, download_button, *preview],
                        api_visibility="private")
    push_button.click(bind(push_message, studio), [name_box], [admin_outcome], api_visibility="private")
    # One generation at a time: the pool waits its turn at the Demo's gate, its progress shown in the outcome.
    pool_button.click(bind(pool_message, studio), [name_box, pool_prompts, pool_k], [pool_outcome],
                      concurrency_limit=None, show_progress_on=[pool_outcome], api_visibility="private")
    gr.api(bind(export, studio), api_name="export")
    gr.api(bind(push, studio), api_name="push")


def gradio_copy(cache: str, served: Path) -> Path:
    """Where gradio keeps its own copy of a file a handler returned (``processing_utils.save_file_to_cache``)."""
    from gradio.processing_utils import hash_file

    return Path(cache) / hash_file(served) / served.name


def launch(studio: Studio, demo: gr.Blocks, **options):
    """Queue and serve the app as configured; ``options`` go to ``launch`` (tests pass prevent_thread_lock)."""
    cores = os.cpu_count() or 1
    threads = generation_threads(studio.config.generate_threads, studio.device.type, cores)
    if threads is not None:
        torch.set_num_threads(threads)
        logger.info("generation uses %d CPU thread(s) of %d", threads, cores)
    demo.queue(default_concurrency_limit=ANNOTATION_CONCURRENCY)
    arguments, indices = endpoint_arguments(demo)
    # Gradio's copy of a served clip goes with ours: its cache of clips keeps our bound between its hourly prunes.
    studio.clip_server.twin = functools.partial(gradio_copy, demo.GRADIO_CACHE)
    return demo.launch(
        server_name=studio.config.host,
        server_port=studio.config.port,
        auth=password_check(studio.users) if studio.users else None,
        # Nothing is served but what handlers return (see studio.serving); never the data folder.
        blocked_paths=[str(studio.config.data_dir.resolve())],
        head=SHORTCUTS_JS,
        # A gradio session holds a copy of the page's state (0.3 MB here); the least recently used go beyond this many.
        state_session_capacity=studio.config.max_sessions,
        css=TOASTS_CSS,
        # No uploads, no body over 1 MB; a call with more or fewer values than its endpoint takes is refused with a
        # message (studio.calls); log-ins are throttled per name and per address (studio.identity).
        app_kwargs={"middleware": [Middleware(RequestLimits), Middleware(ArgumentCount, arguments=arguments, indices=indices),
                                   Middleware(LoginAddress, trust_proxy=studio.config.trust_proxy)]},
        **options,
    )


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        studio = Studio(checked_config(argv))
    except (UnusableModelFolder, IdentityError) as err:  # a --reward-model folder or an --auth-file that cannot be
        # used: one line and exit 2, as a bad flag gets
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except START_REFUSALS as err:  # the reason, not a traceback
        sys.exit(f"error: {err}")
    # SIGTERM (a Space stopping, `kill`) ends the app as Ctrl-C does, so its temporary folder goes (Studio.close).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        launch(studio, build_app(studio))
    finally:
        studio.close()


if __name__ == "__main__":
    main(sys.argv[1:])
