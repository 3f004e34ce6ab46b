"""Prompt perturbations (Tango 2's perturbed and temporal strategies): exact in the sound world, by rule in captions."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from soundworld.perturb import (
    COUNTABLE_SOURCES,
    STRATEGIES,
    Perturbation,
    added_events,
    load_perturbations,
    main,
    perturb,
    save_perturbations,
)
from soundworld import parse, sample_prompts
from soundworld.grammar import MAX_INSTANCES, in_test_split, is_heldout

TRAIN_PROMPTS = sample_prompts("train", 300, 0)
HELDOUT_PROMPTS = sample_prompts("heldout", 100, 0)


def of(strategy: str, perturbations: list[Perturbation]) -> list[Perturbation]:
    return [perturbation for perturbation in perturbations if perturbation.strategy == strategy]


def test_every_sound_world_perturbation_parses_and_changes_what_the_prompt_asks_for():
    for prompt in TRAIN_PROMPTS + HELDOUT_PROMPTS:
        original = parse(prompt).events
        perturbations = perturb(prompt, seed=7)
        assert len({perturbation.prompt for perturbation in perturbations}) == len(perturbations), prompt
        for perturbation in perturbations:
            assert perturbation.strategy in STRATEGIES and perturbation.change
            assert perturbation.prompt != prompt
            events = parse(perturbation.prompt).events  # raises if the grammar does not accept it
            assert sum(count for _, count in events) <= MAX_INSTANCES
            if perturbation.strategy == "temporal":
                assert Counter(events) == Counter(original) and events != original, (prompt, perturbation)
            else:
                assert Counter(events) != Counter(original), (prompt, perturbation)


def test_every_multi_event_training_prompt_gets_both_strategies_and_single_events_only_concept_changes():
    for prompt in TRAIN_PROMPTS:
        perturbations = perturb(prompt)
        assert of("perturbed", perturbations), prompt
        if len(parse(prompt).events) > 1:
            assert of("temporal", perturbations), prompt
        else:
            assert not of("temporal", perturbations), prompt


def test_three_events_get_every_reordering():
    prompt = "first a beep, then a hiss, and finally three clicks"
    orders = {tuple(parse(p.prompt).types) for p in of("temporal", perturb(prompt))}
    assert len(orders) == 5 and ("beep", "hiss", "click") not in orders


def test_after_is_reordered_by_the_events_parsed_not_by_the_words():
    [temporal] = of("temporal", perturb("a beep after a rising chirp"))  # events: chirp, beep
    assert parse(temporal.prompt).events == (("beep", 1), ("rising_chirp", 1))


def test_concept_changes_drop_replace_and_recount():
    perturbed = of("perturbed", perturb("a hiss then two knocks", seed=3))
    events = [parse(p.prompt).events for p in perturbed]
    assert (("knock", 2),) in events and (("hiss", 1),) in events  # each event dropped
    assert (("hiss", 1), ("knock", 1)) in events and (("hiss", 1), ("knock", 3)) in events  # count one step each way
    replaced = [e for e in events if len(e) == 2 and e[0] == ("hiss", 1) and e[1][0] != "knock"]
    assert replaced and all(count == 2 for _, count in (e[1] for e in replaced))  # a counted event keeps its count


def test_single_uncountable_event_is_only_replaced():
    [perturbation] = perturb("a hiss")
    assert perturbation.strategy == "perturbed" and parse(perturbation.prompt).types != ["hiss"]


def test_training_prompts_stay_in_training_and_heldout_replacements_stay_heldout():
    for prompt in TRAIN_PROMPTS:
        for perturbation in perturb(prompt):
            assert not is_heldout(parse(perturbation.prompt).types), (prompt, perturbation)
            assert not in_test_split(perturbation.prompt), (prompt, perturbation)
    for prompt in HELDOUT_PROMPTS:
        for perturbation in perturb(prompt):
            if perturbation.change.startswith("replaced"):
                assert is_heldout(parse(perturbation.prompt).types), (prompt, perturbation)


def test_an_added_event_goes_before_between_and_after_and_keeps_the_split():
    for split in ("train", "heldout"):
        for prompt in sample_prompts(split, 60, seed=3):
            events = parse(prompt).events
            added = added_events(prompt, seed=1)
            if len(events) == 3 or sum(count for _, count in events) == MAX_INSTANCES:
                assert added == []  # the grammar's limits
                continue
            assert len(added) == len(events) + 1 and all(p.strategy == "perturbed" for p in added)
            new_types = {name for p in added for name, _ in parse(p.prompt).events} - {name for name, _ in events}
            assert len(new_types) == 1  # one type, put at each place in time
            [other] = new_types
            for place, perturbation in enumerate(added):
                assert parse(perturbation.prompt).events == events[:place] + ((other, 1),) + events[place:]
                assert is_heldout(parse(perturbation.prompt).types) == (split == "heldout")
                assert split == "heldout" or not in_test_split(perturbation.prompt)
    assert added_events("a dog barks while a car passes") == []  # outside the sound world


def test_deterministic_for_a_seed_and_the_seed_changes_only_wording_and_replacements():
    prompt = "first a beep, then a hiss, and finally three clicks"
    assert perturb(prompt, seed=5) == perturb(prompt, seed=5)
    assert perturb("A dog barks, then a car passes by", seed=5) == perturb("A dog barks, then a car passes by", seed=5)
    runs = [perturb(prompt, seed=seed) for seed in range(4)]
    assert len({tuple(p.prompt for p in run) for run in runs}) > 1
    temporal_orders = {tuple(tuple(parse(p.prompt).events) for p in of("temporal", run)) for run in runs}
    assert len(temporal_orders) == 1


def test_caption_clauses_swap_around_order_words_and_keep_sentence_case():
    temporal = of("temporal", perturb("A dog barks, then a car passes by."))
    assert [p.prompt for p in temporal] == ["A car passes by, then a dog barks."]
    assert of("temporal", perturb("A man talks shortly after a car horn honks"))[0].prompt == (
        "A car horn honks shortly after a man talks")
    assert of("temporal", perturb("TV audio plays before a dog barks and a cat meows"))[0].prompt == (
        "A dog barks and a cat meows before TV audio plays")  # the acronym keeps its case; "and" binds tighter


def test_simultaneous_clauses_have_no_order_to_change_but_can_be_dropped():
    perturbations = perturb("Rain falls while thunder rumbles")
    assert not of("temporal", perturbations)
    assert {"Rain falls", "Thunder rumbles"} <= {p.prompt for p in of("perturbed", perturbations)}


def test_caption_sound_sources_are_replaced_everywhere_with_number_and_article():
    caption = "An engine starts and the engine idles as dogs bark"
    news = set()
    for seed in range(8):
        [engine] = [p for p in perturb(caption, seed=seed) if p.change.startswith("replaced engine with")]
        new = engine.change.split()[-1]
        news.add(new)
        assert new != "dog" and "engine" not in engine.prompt.lower()
        article = "An" if new[0] in "aeiou" else "A"
        assert engine.prompt == f"{article} {new} starts and the {new} idles as dogs bark"
    assert len(news) > 1  # the seed picks the replacement
    [dogs] = [p for p in perturb(caption, seed=1) if p.change.startswith("replaced dog with")]
    assert dogs.prompt.split(" as ")[1].removesuffix(" bark") in set(COUNTABLE_SOURCES.values()) - {"dogs"}


def test_cli_prints_one_json_object_per_line_and_filters_strategies(capsys):
    assert main(["A dog barks, then a car passes by"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {line["strategy"] for line in lines} == set(STRATEGIES)
    assert all({"strategy", "prompt", "change"} <= set(line) for line in lines)
    temporal = [line["prompt"] for line in lines if line["strategy"] == "temporal"]
    assert any(prompt.lower().index("car") < prompt.lower().index("dog") for prompt in temporal)

    assert main(["a hiss then two knocks", "--strategies", "temporal", "--seed", "4"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["strategy"] for line in lines] == ["temporal"]


def test_cli_rejects_an_empty_prompt_in_one_line(capsys):
    assert main(["  "]) != 0
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and "empty" in captured.err
    for empty in ["", " ... "]:
        with pytest.raises(ValueError, match="empty"):
            perturb(empty)


def test_perturbations_file_round_trips_and_accepts_plain_strings(tmp_path):
    table = {prompt: perturb(prompt) for prompt in ["a hiss then two knocks", "A dog barks, then a car passes by"]}
    path = tmp_path / "perturbations.jsonl"
    save_perturbations(path, table)
    assert load_perturbations(path) == table

    path.write_text(json.dumps({"prompt": "A dog barks, then a car passes by",
                                "temporal": ["A car passes by, then a dog barks"]}) + "\n\n")
    assert load_perturbations(path) == {
        "A dog barks, then a car passes by": [Perturbation("temporal", "A car passes by, then a dog barks", "")]}


@pytest.mark.parametrize("line, message", [
    ("not json", "line 2"),
    ('["a list"]', "JSON object"),
    ('{"prompt": "x", "temporial": ["y"]}', "unknown keys"),
    ('{"prompt": "", "temporal": ["y"]}', "'prompt'"),
    ('{"prompt": "x", "temporal": "y"}', "must be a list"),
    ('{"prompt": "x", "perturbed": [{"prompt": "y", "why": "z"}]}', "optional 'change'"),
    ('{"prompt": "x", "perturbed": ["x"]}', "equals its original"),
    ('{"prompt": "a hiss", "perturbed": ["a buzz"]}', "already listed on line 1"),
])
def test_a_malformed_perturbations_line_is_named_by_number(tmp_path, line, message):
    path = tmp_path / "perturbations.jsonl"
    path.write_text('{"prompt": "a hiss", "perturbed": ["a buzz"]}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as error:
        load_perturbations(path)
    assert "line 2" in str(error.value)
