"""LEADER(T) prompts: exact text for single- and multi-visit patients, and truncation that keeps the current visit."""

from __future__ import annotations

import pytest

from data_prep.dataset import Sample, Visit
from leader.prompts import CLOSING_INSTRUCTION, PromptParts, build_prompt, fit_prompts, prompt_parts


def word_count(text: str) -> int:
    return len(text.split())


def split_words(texts: list[str]) -> list[list[str]]:
    return [text.split() for text in texts]


def fit_prompt(parts: PromptParts, budget: int, sample_id: str = "") -> str:
    """One prompt fitted with words as tokens, back as text."""
    return " ".join(fit_prompts([parts], split_words, budget, [sample_id])[0])


def make_sample(history: tuple[Visit, ...], diagnoses=(0, 2), procedures=(1,), profile=(2, 0)) -> Sample:
    return Sample("p1", history, diagnoses, procedures, target=(3,), profile=profile, visit_number=len(history) + 1, patient_visits=len(history) + 1)


def test_single_visit_prompt_has_no_history(tiny_dataset):
    text = build_prompt(make_sample(history=()), tiny_dataset)
    assert text == (
        "The patient has 1 times ICU visits. "
        "In this visit, the patient has diagnosis: diagnosis 0, diagnosis 2; procedures: procedure 1. "
        "Then, the patient should be prescribed:"
    )


def test_multi_visit_prompt_lists_each_earlier_visit_with_its_own_codes(tiny_dataset):
    history = (Visit((5,), (0, 3), (1, 4)), Visit((7, 8), (), (2,)))
    text = build_prompt(make_sample(history), tiny_dataset)
    assert text == (
        "The patient has 3 times ICU visits. "
        "In the 1 visit, the patient had diagnosis: diagnosis 5; procedures: procedure 0, procedure 3; "
        "The patient was prescribed drugs: medication 1, medication 4. "
        "In the 2 visit, the patient had diagnosis: diagnosis 7, diagnosis 8; procedures: none; "
        "The patient was prescribed drugs: medication 2. "
        "In this visit, the patient has diagnosis: diagnosis 0, diagnosis 2; procedures: procedure 1. "
        "Then, the patient should be prescribed:"
    )


def test_profile_sentence_is_optional(tiny_dataset):
    sample = make_sample(history=())
    with_profile = build_prompt(sample, tiny_dataset, include_profile=True)
    assert with_profile.startswith("The patient's age is 65+, gender is F. The patient has 1 times ICU visits.")
    assert "age" not in build_prompt(sample, tiny_dataset)


def test_truncation_drops_oldest_visits_first(tiny_dataset):
    history = tuple(Visit((i,), (0,), (1,)) for i in range(5))
    parts = prompt_parts(make_sample(history), tiny_dataset)
    full = parts.render()
    budget = word_count(full) - 1  # one word too many: exactly the oldest visit must go
    text = fit_prompt(parts, budget)
    assert "In the 1 visit" not in text and "In the 2 visit" in text and "In the 5 visit" in text
    assert text.startswith("The patient has 6 times ICU visits.")  # the true visit count is kept
    assert text.endswith(parts.render(drop_oldest=5).split("ICU visits. ", 1)[1])  # the whole current visit
    assert fit_prompt(parts, word_count(full)) == full


def test_truncation_keeps_current_visit_and_closing_when_it_alone_is_too_long(tiny_dataset):
    history = (Visit((1,), (0,), (1,)),)
    parts = prompt_parts(make_sample(history, diagnoses=tuple(range(10)), procedures=(0, 1, 2)), tiny_dataset)
    no_history = parts.render(drop_oldest=1)
    text = fit_prompt(parts, word_count(no_history) - 4)  # two names (two words each) too many
    assert "In the 1 visit" not in text
    assert "procedures: procedure 0." in text and "procedure 1" not in text
    assert "diagnosis 9" in text
    assert text.endswith("procedure 0. " + CLOSING_INSTRUCTION)


def test_truncation_reports_a_budget_too_small_for_the_header(tiny_dataset):
    parts = prompt_parts(make_sample(history=()), tiny_dataset)
    with pytest.raises(ValueError, match="p1#1.*raise max_length"):
        fit_prompt(parts, 5, sample_id="p1#1")


def reference_fit(parts: PromptParts, budget: int) -> str:
    """The longest fitting rendering by exhaustive search: visits dropped oldest first, then names from the end."""
    for dropped in range(len(parts.history) + 1):
        if word_count(text := parts.render(drop_oldest=dropped)) <= budget:
            return text
    for keep in range(parts.n_current_names, -1, -1):
        if word_count(text := parts.render(drop_oldest=len(parts.history), keep_current_names=keep)) <= budget:
            return text
    raise AssertionError("nothing fits")


def test_prompts_fitted_in_lockstep_equal_each_prompt_fitted_alone(tiny_dataset):
    samples = [
        make_sample(tuple(Visit((i % 3,), (0,) * (i % 2), (1, 2)) for i in range(n)), diagnoses=tuple(range(d)), procedures=(0, 1))
        for n, d in [(0, 1), (1, 4), (3, 2), (6, 8), (9, 3)]
    ]
    parts = [prompt_parts(s, tiny_dataset) for s in samples]
    calls = []

    def encode(texts):
        calls.append(len(texts))
        return split_words(texts)

    for budget in (24, 30, 45, 80, 400):
        calls.clear()
        fitted = [" ".join(ids) for ids in fit_prompts(parts, encode, budget)]
        assert fitted == [reference_fit(p, budget) for p in parts]
        assert len(calls) <= 2 * (1 + 4) + 1  # rounds of a binary search, not one call per rendering
