"""Prompts of LEADER(T): a patient's record as the natural-language text of the paper's section III-B-1.

The template follows the paper's "Input Prompt Template" (the specification)::

    The patient has <VISIT_NUM> times ICU visits. In the 1 visit, the patient had diagnosis: <names>;
    procedures: <names>; The patient was prescribed drugs: <names>. In the 2 visit, ... In this visit, the
    patient has diagnosis: <names>; procedures: <names>. Then, the patient should be prescribed:

Single-visit patients have no history part. Names come from the prepared dataset's vocabularies.

Deliberate differences from the published notebook (data/mimic3/construction.ipynb of liuqidong07/LEADER-pytorch):

- <VISIT_NUM> is the number of visits including the current one (the paper's wording); the notebook writes
  the number of earlier visits (``item_df.shape[0] - 1``).
- Each earlier visit shows its own diagnoses. The notebook's history template holds ``<DIAGNOSIS>`` but is
  filled with ``.replace("<DIGNOSIS>", ...)`` (a typo), so every history visit shows the current visit's
  diagnoses once the main template is filled.
- The paper's wording ("In the 1 visit", "the patient has", "; The patient was prescribed drugs") instead of
  the notebook's ("In 1 visit", "he has", ". The patient ..."); parts are joined by single spaces (the
  notebook's " \\n " line breaks are whitespace to every tokenizer we use) and there is no trailing space.
- All earlier visits are kept and only the oldest are dropped when the prompt exceeds the token budget; the
  notebook keeps the last 3 earlier visits whatever their length.
- An empty name list reads "none" (the notebook leaves the slot empty: "procedures: ;").
- The profile sentence is an option (``include_profile``); the notebook has it commented out. Its form,
  "The patient's age is 65-79, gender is F, insurance is Medicare.", works for any profile fields a source has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, Sequence

from data_prep.dataset import PreparedDataset, Sample

CLOSING_INSTRUCTION = "Then, the patient should be prescribed:"


def _names(indices: Sequence[int], names: Sequence[str]) -> list[str]:
    return [names[i] for i in indices]


def _join(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"


def profile_sentence(profile: dict[str, str]) -> str:
    """"The patient's age is 65-79, gender is F." from ``PreparedDataset.profile_text``."""
    clauses = [f"{field.replace('_', ' ')} is {value}" for field, value in profile.items()]
    return f"The patient's {', '.join(clauses)}." if clauses else ""


@dataclass(frozen=True)
class PromptParts:
    """A prompt kept in pieces, so that truncation can drop whole earlier visits and current-visit names."""

    header: str  # optional profile sentence + visit count
    history: tuple[str, ...]  # one clause per earlier visit, oldest first
    diagnoses: tuple[str, ...]  # current visit's diagnosis names
    procedures: tuple[str, ...]  # current visit's procedure names

    @property
    def n_current_names(self) -> int:
        return len(self.diagnoses) + len(self.procedures)

    def render(self, drop_oldest: int = 0, keep_current_names: int | None = None) -> str:
        """The text without the ``drop_oldest`` oldest visits and with the first ``keep_current_names``
        current-visit names (diagnoses first, then procedures); the closing instruction always stays."""
        keep = self.n_current_names if keep_current_names is None else keep_current_names
        diagnoses = self.diagnoses[:keep]
        procedures = self.procedures[: max(0, keep - len(self.diagnoses))]
        current = f"In this visit, the patient has diagnosis: {_join(diagnoses)}; procedures: {_join(procedures)}."
        return " ".join([self.header, *self.history[drop_oldest:], current, CLOSING_INSTRUCTION])


def prompt_parts(sample: Sample, dataset: PreparedDataset, include_profile: bool = False) -> PromptParts:
    diag_names, proc_names, med_names = dataset.diagnoses.names, dataset.procedures.names, dataset.medications.names
    header = f"The patient has {sample.visit_number} times ICU visits."
    if include_profile:
        header = f"{profile_sentence(dataset.profile_text(sample.profile))} {header}".lstrip()
    history = tuple(
        f"In the {number} visit, the patient had diagnosis: {_join(_names(visit.diagnoses, diag_names))}; "
        f"procedures: {_join(_names(visit.procedures, proc_names))}; "
        f"The patient was prescribed drugs: {_join(_names(visit.medications, med_names))}."
        for number, visit in enumerate(sample.history, start=1)
    )
    return PromptParts(
        header=header,
        history=history,
        diagnoses=tuple(_names(sample.diagnoses, diag_names)),
        procedures=tuple(_names(sample.procedures, proc_names)),
    )


def build_prompt(sample: Sample, dataset: PreparedDataset, include_profile: bool = False) -> str:
    return prompt_parts(sample, dataset, include_profile).render()


def _longest_fitting(parts: PromptParts, max_tokens: int, sample_id: str) -> Generator[str, list[int], list[int]]:
    """One prompt's search for its longest rendering within ``max_tokens``, as a generator: it yields the
    renderings it must measure, is sent their token ids, and returns the ids of the rendering it keeps. Drop
    the oldest earlier visits first; if the current visit alone is still too long, drop its names from the
    end (procedures, then diagnoses), keeping the header and the closing instruction. Binary searches over
    a monotone "fits" (False ... False True ... True), so a long record costs O(log n) tokenisations, and
    the shortest renderings are measured first: most prompts never need their whole history tokenised."""

    def smallest(lo: int, hi: int, render: Callable[[int], str]):
        """(smallest k in [lo, hi] whose rendering fits, its ids), or (None, the ids of render(hi))."""
        ids = yield render(hi)
        if len(ids) > max_tokens:
            return None, ids
        kept = ids
        while lo < hi:
            mid = (lo + hi) // 2
            ids = yield render(mid)
            if len(ids) <= max_tokens:
                hi, kept = mid, ids
            else:
                lo = mid + 1
        return hi, kept

    n_history = len(parts.history)
    dropped, ids = yield from smallest(0, n_history, lambda k: parts.render(drop_oldest=k))
    if dropped is not None:
        return ids
    # keeping n names fits <=> dropping (total - n) fits; search over the number dropped
    total = parts.n_current_names
    names_dropped, ids = yield from smallest(
        0, total, lambda d: parts.render(drop_oldest=n_history, keep_current_names=total - d)
    )
    if names_dropped is None:
        raise ValueError(
            f"max_length {max_tokens} leaves no room for the header and closing instruction of sample {sample_id!r} "
            f"({len(ids)} tokens); raise max_length"
        )
    return ids


def fit_prompts(
    parts: Sequence[PromptParts], encode: Callable[[list[str]], list[list]], max_tokens: int, sample_ids: Sequence[str] = ()
) -> list[list]:
    """Each prompt's tokens, its longest rendering within ``max_tokens`` tokens (see :func:`_longest_fitting`).
    ``encode`` tokenises a list of texts; the prompts' searches run in lockstep, one ``encode`` call per
    round over every prompt still searching (a fast tokenizer's batch call, not one call per rendering)."""
    searches = [_longest_fitting(p, max_tokens, sample_ids[i] if sample_ids else "") for i, p in enumerate(parts)]
    fitted: list[list] = [[] for _ in parts]
    pending = {i: next(search) for i, search in enumerate(searches)}
    while pending:
        order = list(pending)
        measured = encode([pending[i] for i in order])
        pending = {}
        for i, ids in zip(order, measured):
            try:
                pending[i] = searches[i].send(ids)
            except StopIteration as done:
                fitted[i] = done.value
    return fitted
