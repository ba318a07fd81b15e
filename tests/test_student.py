"""LEADER(S): batching, single-visit patients, visit cap, encoder sharing, teacher use, persistence.

The teacher is a fake (fixed random hidden states and probabilities) installed as ``leader.teacher``,
so these tests check the student alone and stay fast.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import zlib

import numpy as np
import pytest
import torch

import leader.student as student_module
from leader.losses import feature_kd_loss
from leader.student import LeaderStudent, StudentConfig

TEACHER_WIDTH = 24


class FakeTeacher:
    hidden_size = TEACHER_WIDTH
    n_layers = 6

    def __init__(self, n_medications: int, val_loss: float = 0.2):
        self.n_medications = n_medications
        self.calls: list = []
        self.fit_report = {"val_loss": val_loss}
        self.head = np.random.default_rng(1).normal(size=(TEACHER_WIDTH, n_medications)).astype(np.float32)

    def _rows(self, samples) -> np.ndarray:  # a fixed pseudo-random row per sample id
        return np.stack([np.random.default_rng(zlib.crc32(s.sample_id.encode())).random(TEACHER_WIDTH + self.n_medications) for s in samples])

    def cache_key(self, train, val) -> str:
        return "fake-teacher"

    def hidden_states(self, samples, layers=None) -> np.ndarray:
        if layers is not None:
            self.calls.append(("hidden_states", tuple(layers)))
            rows = self._rows(samples)[:, :TEACHER_WIDTH].astype(np.float32)
            return np.stack([rows * (layer + 1) for layer in layers], axis=1)
        self.calls.append("hidden_states")
        return self._rows(samples)[:, :TEACHER_WIDTH].astype(np.float32)

    def logits_from_states(self, states) -> np.ndarray:
        self.calls.append("logits_from_states")
        return states @ self.head

    def predict_proba(self, samples) -> np.ndarray:
        self.calls.append("predict_proba")
        return self._rows(samples)[:, TEACHER_WIDTH:].astype(np.float32)


@dataclasses.dataclass
class FakeTeacherConfig:
    preset_name: str = "paper"
    lora_rank: int = 8
    teacher_path: str = ""

    @classmethod
    def preset(cls, name="paper", **overrides):
        return cls(preset_name=name, **overrides)


def install_fake_teachers(monkeypatch, obtain_teacher) -> None:
    """``leader.teacher`` replaced by a module whose ``obtain_teacher(dataset, train, val, config, seed, device)`` is given."""
    module = types.ModuleType("leader.teacher")
    module.TeacherConfig, module.obtain_teacher = FakeTeacherConfig, obtain_teacher
    monkeypatch.setitem(sys.modules, "leader.teacher", module)


@pytest.fixture
def fake_teacher(monkeypatch, tiny_dataset):
    teacher = FakeTeacher(tiny_dataset.n_medications)

    def obtain_teacher(dataset, train, val, config, seed, device="cpu"):
        teacher.calls.append(("obtain", config.preset_name, config.lora_rank, len(train), seed))
        return teacher

    install_fake_teachers(monkeypatch, obtain_teacher)
    return teacher


@pytest.fixture(scope="module")
def splits(tiny_dataset):
    return tiny_dataset.samples("train"), tiny_dataset.samples("val"), tiny_dataset.samples("test")


def quick(**overrides) -> StudentConfig:
    return StudentConfig.preset("quick", **{"epochs": 2, **overrides})


def untrained(dataset, **overrides) -> LeaderStudent:
    model = LeaderStudent(dataset, quick(**overrides), seed=0)
    torch.manual_seed(0)
    model.network = model.build_network().eval()
    return model


def test_batch_size_one_trains_and_predicts(tiny_dataset, splits, fake_teacher):
    train, val, test = splits
    model = LeaderStudent(tiny_dataset, quick(batch_size=1, epochs=1), seed=0).fit(train[:6], val)
    proba = model.predict_proba(test[:1])
    assert proba.shape == (1, tiny_dataset.n_medications)
    assert np.isfinite(proba).all() and ((proba > 0) & (proba < 1)).all()


def test_single_visit_patients_are_served_and_depend_on_the_profile(tiny_dataset):
    model = untrained(tiny_dataset)
    single = next(s for s in tiny_dataset.samples("train") if not s.history)
    other_profile = tuple((v + 1) % n for v, n in zip(single.profile, tiny_dataset.profile_cardinalities()))
    proba = model.predict_proba([single, dataclasses.replace(single, profile=other_profile)])
    assert np.isfinite(proba).all()
    assert np.abs(proba[0] - proba[1]).max() > 1e-4


def test_prediction_ignores_the_target_and_a_batch_gives_each_sample_its_own_result(tiny_dataset, splits):
    model = untrained(tiny_dataset)
    samples = splits[0][:7]
    together = model.predict_proba(samples)
    alone = np.concatenate([model.predict_proba([s]) for s in samples])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    no_target = [dataclasses.replace(s, target=()) for s in samples]
    np.testing.assert_allclose(model.predict_proba(no_target), together, atol=1e-6)


def test_the_most_recent_visits_are_kept_and_medications_come_from_history_only(tiny_dataset):
    patient = next(p for p in tiny_dataset.patients if len(p.visits) == 4)
    sample = tiny_dataset.samples(tiny_dataset.split[patient.patient_id])
    sample = next(s for s in sample if s.patient_id == patient.patient_id)
    model = untrained(tiny_dataset, max_visits=2)
    batch = model.collate([sample])
    kept = [patient.visits[2], patient.visits[3]]
    assert batch["visit_mask"].tolist() == [[True, True]]
    assert [row[mask].tolist() for row, mask in zip(batch["diagnoses"], batch["diagnoses_mask"])] == [list(v.diagnoses) for v in kept]
    assert [row[mask].tolist() for row, mask in zip(batch["medications"], batch["medications_mask"])] == [list(patient.visits[2].medications)]
    assert batch["last_slots"].tolist() == [1]


def test_encoding_rows_in_length_groups_equals_encoding_them_all_padded(tiny_dataset, splits):
    model = untrained(tiny_dataset)
    encoder = model.network.diagnosis_encoder
    sets = [s.diagnoses for s in splits[0][:13]] + [()]  # lengths differ; one empty set
    codes, mask = student_module.pad_sequences(sets)
    values = encoder.embedding(codes)
    with torch.no_grad():
        whole = student_module.encode_pooled(encoder.transformer, values, mask, groups=1)
        grouped = student_module.encode_pooled(encoder.transformer, values, mask, groups=3)
    torch.testing.assert_close(grouped, whole, atol=1e-5, rtol=1e-5)
    assert whole[-1].abs().max() == 0  # the empty set pools to zero either way


def test_split_visit_encoders_add_exactly_two_visit_transformers(tiny_dataset):
    shared = untrained(tiny_dataset).network
    split = untrained(tiny_dataset, shared_visit_encoder=False).network
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(split) - count(shared) == 2 * count(shared.visit_encoders[0])


def test_empty_code_sets_give_finite_predictions(tiny_dataset, splits):
    model = untrained(tiny_dataset)
    sample = next(s for s in splits[0] if s.history)
    emptied = dataclasses.replace(sample, procedures=(), history=(dataclasses.replace(sample.history[0], medications=()),) + sample.history[1:])
    assert np.isfinite(model.predict_proba([emptied, sample])).all()


def test_without_kd_no_teacher_is_obtained(tiny_dataset, splits, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("kd='none' must not obtain a teacher")

    monkeypatch.setitem(sys.modules, "leader.teacher", types.SimpleNamespace(obtain_teacher=refuse, TeacherConfig=None))
    model = LeaderStudent(tiny_dataset, quick(kd="none", epochs=1), seed=0).fit(*splits[:2])
    assert model.fit_report["kd"] == "none" and model.fit_report["teacher_hidden_size"] is None


def test_feature_kd_uses_each_samples_own_teacher_state(tiny_dataset, splits, fake_teacher, monkeypatch):
    train, val, _ = splits
    checked = {}

    def check_loss(model, train_samples, val_samples):
        batch_samples = train_samples[::-1][:5]
        batch = model.collate(batch_samples)
        model.network.eval()
        out = model.network(batch)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, batch["target"])
        teacher = torch.from_numpy(fake_teacher.hidden_states(batch_samples))
        expected = bce + model.config.alpha * feature_kd_loss(model.training_heads["kd_projectors"][0](out.representation), teacher)
        checked["difference"] = abs(model.loss(batch, 0).item() - expected.item())
        return {}

    monkeypatch.setattr(student_module, "train_network", check_loss)
    model = LeaderStudent(tiny_dataset, quick(align=False, teacher_overrides={"lora_rank": 4}), seed=3)
    model.fit(train, val)
    assert checked["difference"] < 1e-5
    assert fake_teacher.calls[0] == ("obtain", "quick", 4, len(train), 3)
    assert fake_teacher.calls.count("hidden_states") == 2  # once for the fit, once in check_loss
    assert model.fit_report["teacher"] == {"name": "default", "seed": 3, "cache_key": "fake-teacher", "val_loss": 0.2, "weight": 1.0}
    assert model.fit_report["teacher_hidden_size"] == TEACHER_WIDTH


@pytest.mark.parametrize("kd", ["output", "temperature", "projector"])
def test_other_distillation_strategies_train(tiny_dataset, splits, fake_teacher, kd):
    model = LeaderStudent(tiny_dataset, quick(kd=kd, epochs=1), seed=0).fit(*splits[:2])
    assert fake_teacher.calls[1:] == ["hidden_states", "logits_from_states"]  # output KD: the head on the cached h
    assert np.isfinite(model.predict_proba(splits[2])).all()


def test_training_is_deterministic_and_a_saved_model_predicts_the_same(tiny_dataset, splits, fake_teacher, tmp_path):
    train, val, test = splits
    first = LeaderStudent(tiny_dataset, quick(), seed=5).fit(train, val)
    second = LeaderStudent(tiny_dataset, quick(), seed=5).fit(train, val)
    np.testing.assert_array_equal(first.predict_proba(test), second.predict_proba(test))
    path = first.save(tmp_path / "leader_s.pt")
    restored = LeaderStudent.load(path, tiny_dataset)
    np.testing.assert_allclose(restored.predict_proba(test), first.predict_proba(test), atol=1e-6)


def test_bad_options_and_inputs_get_clear_errors(tiny_dataset, splits):
    with pytest.raises(ValueError, match="kd='distil' is unknown"):
        quick(kd="distil")
    model = untrained(tiny_dataset)
    bad = dataclasses.replace(splits[0][0], diagnoses=(tiny_dataset.n_diagnoses,))
    with pytest.raises(ValueError, match="diagnoses code index lies outside"):
        model.collate([bad])
    with pytest.raises(ValueError, match="profile values"):
        model.collate([dataclasses.replace(splits[0][0], profile=(99, 0))])


def test_the_teacher_seed_defaults_to_the_students_and_can_be_fixed(tiny_dataset, splits, fake_teacher):
    """Students of several seeds can share one teacher (training-seed spread of the student alone)."""
    train, val, _ = splits
    LeaderStudent(tiny_dataset, quick(epochs=1), seed=3).fit(train[:6], val)
    LeaderStudent(tiny_dataset, quick(epochs=1, teacher_seed=0), seed=5).fit(train[:6], val)
    assert [call[-1] for call in fake_teacher.calls if call[0] == "obtain"] == [3, 0]


# ----- DistilLLM-Med options: several teachers, layer KD, specialty weighting, curriculum ------------------
@pytest.fixture
def fake_teachers(monkeypatch, tiny_dataset):
    """Teachers by teacher_path: "a" (validation BCE 0.2) and "b" (0.6); "" is "a"."""
    teachers = {"a": FakeTeacher(tiny_dataset.n_medications, 0.2), "b": FakeTeacher(tiny_dataset.n_medications, 0.6)}
    teachers["b"].head = -teachers["b"].head  # b disagrees with a on every medication
    install_fake_teachers(monkeypatch, lambda dataset, train, val, config, seed, device="cpu": teachers[config.teacher_path or "a"])
    return teachers


def capture_loss_check(monkeypatch, expected_of):
    """Replace the training loop by one comparison of model.loss with expected_of(model, batch, out)."""
    checked = {}

    def check(model, train_samples, val_samples):
        batch = model.collate(train_samples[:6])
        model.network.eval()
        out = model.network(batch)
        checked["loss"], checked["expected"] = model.loss(batch, 0).item(), expected_of(model, batch, out, train_samples[:6]).item()
        return {}

    monkeypatch.setattr(student_module, "train_network", check)
    return checked


def test_several_teachers_are_weighted_by_validation_loss_and_recorded(tiny_dataset, splits, fake_teachers, monkeypatch):
    train, val, _ = splits

    def expected(model, batch, out, samples):
        terms = [feature_kd_loss(model.training_heads["kd_projectors"][i](out.representation), torch.from_numpy(t.hidden_states(samples)))
                 for i, t in enumerate((fake_teachers["a"], fake_teachers["b"]))]
        bce = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, batch["target"])
        return bce + model.config.alpha * (0.75 * terms[0] + 0.25 * terms[1])  # 1/0.2 : 1/0.6 = 3 : 1

    checked = capture_loss_check(monkeypatch, expected)
    model = LeaderStudent(tiny_dataset, quick(align=False, teachers=["a", "b"]), seed=0).fit(train, val)
    assert checked["loss"] == pytest.approx(checked["expected"], abs=1e-5)
    records = model.fit_report["teacher"]
    assert [(r["name"], r["val_loss"], r["weight"]) for r in records] == [("a", 0.2, pytest.approx(0.75)), ("b", 0.6, pytest.approx(0.25))]

    fixed = LeaderStudent(tiny_dataset, quick(teachers=["a", {"teacher_path": "b", "lora_rank": 4}], teacher_weighting="fixed",
                                               teacher_weights=[1, 3]), seed=0).fit(train, val)
    assert [r["weight"] for r in fixed.fit_report["teacher"]] == [pytest.approx(0.25), pytest.approx(0.75)]
    assert fixed.fit_report["teacher"][1]["name"] == "b"


def test_teacher_options_are_checked_and_survive_a_save(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="teacher_weights"):
        quick(teachers=["a", "b"], teacher_weights=[1.0])
    with pytest.raises(ValueError, match="teacher_weighting"):
        quick(teacher_weighting="best")
    with pytest.raises(ValueError, match="layer_kd"):
        quick(layer_kd=True, kd="output")
    config = quick(teachers=["minilm", {"teacher_path": "smollm2", "quantization": "int8"}], teacher_overrides={"max_steps": 5})
    assert config.teacher_specs() == [("minilm", {"max_steps": 5, "teacher_path": "minilm"}),
                                      ("smollm2", {"max_steps": 5, "teacher_path": "smollm2", "quantization": "int8"})]
    assert quick(kd="none", teachers=["a"]).teacher_specs() == []
    model = untrained(tiny_dataset, teachers=["minilm", {"teacher_path": "smollm2"}], teacher_weights=[1, 2])
    assert LeaderStudent.load(model.save(tmp_path / "s.pt"), tiny_dataset).config == model.config


def test_layer_kd_maps_two_teacher_layers_to_the_set_and_visit_levels(tiny_dataset, splits, fake_teachers, monkeypatch):
    train, val, _ = splits
    teacher = fake_teachers["a"]

    def expected(model, batch, out, samples):
        heads = model.training_heads
        layers = torch.from_numpy(teacher.hidden_states(samples, layers=(2, 4)))
        eq9 = feature_kd_loss(heads["kd_projectors"][0](out.representation), torch.from_numpy(teacher.hidden_states(samples)))
        levels = feature_kd_loss(heads["set_projectors"][0](out.set_level), layers[:, 0]) + feature_kd_loss(heads["visit_projectors"][0](out.visit_level), layers[:, 1])
        bce = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, batch["target"])
        return bce + model.config.alpha * (eq9 + 0.5 * levels / 2)

    checked = capture_loss_check(monkeypatch, expected)
    model = LeaderStudent(tiny_dataset, quick(align=False, layer_kd=True, layer_kd_weight=0.5), seed=0).fit(train, val)
    assert checked["loss"] == pytest.approx(checked["expected"], abs=1e-5)
    assert ("hidden_states", (2, 4)) in teacher.calls  # L/3 and 2L/3 of the teacher's 6 layers
    assert model.fit_report["teacher"]["layers"] == [2, 4]
    out = model.network(model.collate(train[:3]))
    assert out.set_level.shape == (3, 2 * model.config.embedding_dim) and out.visit_level.shape == (3, 3 * model.config.embedding_dim)


def test_specialty_weighting_weighs_each_medications_bce_by_its_atc_group(splits, fake_teachers, monkeypatch):
    from conftest import make_tiny_dataset
    from data_prep.dataset import Vocabulary
    from leader.losses import specialty_weights

    dataset = make_tiny_dataset()
    codes = ["C01A", "C03C", "C07A", "C09A", "N02B", "N05B", "A02B", "B01A"]
    dataset = dataclasses.replace(dataset, medications=Vocabulary("medication", codes, codes))
    train, val = dataset.samples("train"), dataset.samples("val")
    weights = specialty_weights(target_tensor_of(train, dataset.n_medications), [c[0] for c in codes])

    def expected(model, batch, out, samples):
        return torch.nn.functional.binary_cross_entropy_with_logits(out.logits, batch["target"], weight=weights)

    checked = capture_loss_check(monkeypatch, expected)
    LeaderStudent(dataset, quick(align=False, kd="none", specialty_weighting=True), seed=0).fit(train, val)
    assert checked["loss"] == pytest.approx(checked["expected"], abs=1e-6)
    not_atc = dataclasses.replace(dataset, medications=Vocabulary("medication", [f"drug{i}" for i in range(8)], codes))
    with pytest.raises(ValueError, match="ATC"):
        LeaderStudent(not_atc, quick(kd="none", specialty_weighting=True), seed=0).fit(train, val)


def target_tensor_of(samples, n):
    from bench.training import target_tensor

    return target_tensor(samples, n)


def test_curriculum_ranks_by_the_teachers_loss_or_by_record_length(tiny_dataset, splits, fake_teachers, monkeypatch):
    train, val, _ = splits
    ranked = {}

    def record(model, train_samples, val_samples):
        ranked["difficulty"], ranked["measure"] = model.sample_difficulty(train_samples)
        return {}

    monkeypatch.setattr(student_module, "train_network", record)
    LeaderStudent(tiny_dataset, quick(curriculum=True), seed=0).fit(train, val)
    teacher = fake_teachers["a"]
    logits = torch.from_numpy(teacher.logits_from_states(teacher.hidden_states(train)))
    per_sample = torch.nn.functional.binary_cross_entropy_with_logits(logits, target_tensor_of(train, tiny_dataset.n_medications), reduction="none").mean(1)
    assert ranked["measure"] == "teacher per-sample BCE"
    np.testing.assert_allclose(ranked["difficulty"], per_sample.numpy(), rtol=1e-5)
    LeaderStudent(tiny_dataset, quick(curriculum=True, kd="none"), seed=0).fit(train, val)
    assert ranked["measure"] == "record length"


def test_a_curriculum_student_trains_end_to_end(tiny_dataset, splits, fake_teachers):
    model = LeaderStudent(tiny_dataset, quick(curriculum=True, curriculum_epochs=1, epochs=3), seed=0).fit(*splits[:2])
    assert model.fit_report["curriculum"] == {"difficulty": "teacher per-sample BCE", "start": 0.3, "epochs": 1}
    assert np.isfinite(model.predict_proba(splits[2])).all()
