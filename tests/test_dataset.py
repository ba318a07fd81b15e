import numpy as np
import pytest

from data_prep.dataset import PreparedDataset, Visit, Vocabulary, cooccurrence_adjacency, split_patients


def test_split_is_patient_level_seeded_and_complete(tiny_dataset):
    ids = [p.patient_id for p in tiny_dataset.patients]
    split = split_patients(ids, seed=3)
    assert set(split) == set(ids)
    assert split == split_patients(list(reversed(ids)), seed=3)  # independent of reader order
    assert split != split_patients(ids, seed=4)
    counts = {part: sum(v == part for v in split.values()) for part in ("train", "val", "test")}
    assert counts == {"train": 32, "val": 4, "test": 4}


def test_samples_follow_the_last_visit_protocol(tiny_dataset):
    test_patients = tiny_dataset.patients_in("test")
    samples = tiny_dataset.samples("test")
    assert [s.patient_id for s in samples] == [p.patient_id for p in test_patients]
    for patient, sample in zip(test_patients, samples):
        assert sample.target == patient.visits[-1].medications
        assert sample.history == patient.visits[:-1]
        assert sample.group == patient.group
    ids = {part: {s.patient_id for s in tiny_dataset.samples(part)} for part in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])


def test_all_visits_protocol_makes_one_sample_per_visit(tiny_dataset):
    samples = tiny_dataset.samples("train", protocol="all-visits")
    assert len(samples) == sum(len(p.visits) for p in tiny_dataset.patients_in("train"))
    patients = tiny_dataset.patients_in("train")
    assert sum(s.group == "single" for s in samples) == sum(p.group == "single" for p in patients)
    assert sum(s.group == "first" for s in samples) == sum(p.group == "multi" for p in patients)
    with pytest.raises(ValueError, match="unknown protocol"):
        tiny_dataset.samples("train", protocol="every-visit")


def test_ehr_graph_uses_training_patients_only(tiny_dataset):
    train_visits = [v for p in tiny_dataset.patients_in("train") for v in p.visits]
    expected = cooccurrence_adjacency(train_visits, tiny_dataset.n_medications)
    assert np.array_equal(tiny_dataset.ehr_adj, expected)
    assert np.array_equal(tiny_dataset.ddi_adj, tiny_dataset.ddi_adj.T)
    assert not tiny_dataset.ddi_adj.diagonal().any()


def test_cooccurrence_counts_pairs_within_a_visit():
    adj = cooccurrence_adjacency([Visit((0,), (0,), (0, 2)), Visit((0,), (0,), (1,))], 3)
    assert adj.tolist() == [[0, 0, 1], [0, 0, 0], [1, 0, 0]]


def test_save_load_round_trip(tiny_dataset, tmp_path):
    path = tiny_dataset.save(tmp_path / "ds")
    loaded = PreparedDataset.load(path)
    assert loaded.patients == tiny_dataset.patients
    assert loaded.split == tiny_dataset.split
    assert loaded.medications.names == tiny_dataset.medications.names
    assert np.array_equal(loaded.ddi_adj, tiny_dataset.ddi_adj)
    assert loaded.fingerprint == tiny_dataset.fingerprint
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_load_of_a_folder_without_dataset_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing dataset.json"):
        PreparedDataset.load(tmp_path)


def test_vocabulary_rejects_duplicates_and_names_unknown_codes():
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary("diagnosis", ["A", "A"], ["a", "a"])
    with pytest.raises(KeyError, match="'Z'"):
        Vocabulary("diagnosis", ["A"], ["a"]).index("Z")
