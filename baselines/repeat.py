"""``repeat``: the previous visit's medications, again (the history floor of every table).

No paper proposes it and none of the field's harnesses reports it, yet it is what a history model must
beat: on MIMIC most of a visit's medication set was already given at the patient's previous visit
(``bench data info`` reports the share for any dataset), so a model that reads earlier medications shows
what it adds over copying only beside this floor.

Its set is the previous visit's medication set. Its probabilities rank, without any training, the
medications of the previous visit first (1.0), then those last given k visits back at 1/k (0.5 two visits
back, 0.33 three back, ...), every other medication at 0: a deterministic ranking for PRAUC that copies
the most recent regimen first. It needs a previous visit, so it serves multi-visit samples only and its
overall and single-visit cells read "-". The set is its own decision rule: a tuned threshold does not
change it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from bench.contract import Capabilities, MedRecModel, ModelConfig, training_record
from data_prep.dataset import Sample


@dataclass
class RepeatConfig(ModelConfig):
    QUICK: ClassVar[dict] = {}


class RepeatPrevious(MedRecModel):
    name = "repeat"
    floor = 1  # the history floor
    config_class = RepeatConfig
    capabilities = Capabilities(needs_history_medications=True)
    decides_by_threshold = False

    def fit(self, train: Sequence[Sample], val: Sequence[Sample]) -> "RepeatPrevious":
        self.fit_report = {"train_seconds": 0.0, "training_samples": training_record([])}  # learns nothing: a fixed rule
        return self

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        self.check_samples(samples)
        proba = np.zeros((len(samples), self.dataset.n_medications))
        for row, sample in zip(proba, samples):
            for back, visit in enumerate(reversed(sample.history), start=1):
                given = list(visit.medications)
                row[given] = np.maximum(row[given], 1.0 / back)
        return proba

    def predict_sets(self, samples: Sequence[Sample], proba: np.ndarray | None = None) -> list[np.ndarray]:
        self.check_samples(samples)
        return [np.array(sorted(set(s.history[-1].medications)), dtype=np.int64) for s in samples]

    def decision_rule(self) -> str:
        return "the previous visit's set"

    def get_state(self) -> dict:
        return {}

    def set_state(self, state: dict) -> None:
        pass
