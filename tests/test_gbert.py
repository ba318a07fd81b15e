import copy
import dataclasses

import numpy as np
import pytest
import torch

from torch.nn import functional as F

from baselines.gbert import (
    ATC_ROOT, CLS, ICD9_ROOT, MASK, N_SPECIAL, PAD, GBert, TokenLayout, attention, atc_chain, build_tree, icd9_chain, icd9_sections, pretraining_visits,
)
from bench.contract import training_record
from bench.training import target_tensor
from data_prep.dataset import Visit

FAST = dict(rounds=1, epochs=2, patience=2, pretrain_epochs=2, dim=16, ffn_dim=16, batch_size=8, pretrain_batch_size=16)


@pytest.fixture(scope="module")
def fitted(tiny_dataset):
    model = GBert(tiny_dataset, GBert.Config(**FAST), seed=0)
    return model.fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))


@pytest.mark.parametrize(
    "code, chain",
    [
        ("25000", ["25000", "250", "249-259", ICD9_ROOT]),
        ("4019", ["4019", "401", "401-405", ICD9_ROOT]),
        ("99889", ["99889", "998", "996-999", ICD9_ROOT]),
        ("042", ["042", "042-042", ICD9_ROOT]),  # a 3-character code hangs from its section
        ("1760", ["1760", "176", "176-176", ICD9_ROOT]),
        ("V5861", ["V5861", "V58", "V50-V59", ICD9_ROOT]),
        ("V8541", ["V8541", "V85", "V85-V85", ICD9_ROOT]),
        ("V053", ["V053", "V05", "V01-V09", ICD9_ROOT]),
        ("E8788", ["E8788", "E878", "E878-E879", ICD9_ROOT]),
        ("E9791", ["E9791", "E979", "E979-E979", ICD9_ROOT]),  # terrorism: missing in the reference's table
        ("E0000", ["E0000", "E000", "E000-E000", ICD9_ROOT]),
        ("E849", ["E849", "E846-E849", ICD9_ROOT]),
        ("0431", ["0431", "043", "001-139", ICD9_ROOT]),  # a category in no section: its chapter
        ("ICD9:25000", ["ICD9:25000", "250", "249-259", ICD9_ROOT]),
        ("ICD10:E119", ["ICD10:E119", "ICD10:E11", "ICD10:E", ICD9_ROOT]),
        ("D7", ["D7", "D", ICD9_ROOT]),
    ],
)
def test_icd9_chains(code, chain):
    assert icd9_chain(code) == chain


@pytest.mark.parametrize(
    "code, chain",
    [
        ("N02B", ["N02B", "N02", "N", ATC_ROOT]),  # ATC-3: no self-edge through code[:4]
        ("A10B", ["A10B", "A10", "A", ATC_ROOT]),
        ("L01CD", ["L01CD", "L01C", "L01", "L", ATC_ROOT]),
        ("N02BE01", ["N02BE01", "N02BE", "N02B", "N02", "N", ATC_ROOT]),
    ],
)
def test_atc_chains(code, chain):
    assert atc_chain(code) == chain


def test_section_table_nests_sections_in_chapters():
    table = icd9_sections()
    assert len(set(table["section"].values())) > 150
    for category, section in table["section"].items():
        assert category in table["chapter"], f"section {section} holds {category}, which no chapter holds"
    assert table["chapter"]["V91"] == "V01-V91" and table["chapter"]["E999"] == "E000-E999"


def test_tree_edges_children_up_then_ancestors_down():
    tree = build_tree([atc_chain(c) for c in ("N02B", "N02A", "A10B")])
    assert tree.nodes[:3] == ("N02B", "N02A", "A10B") and tree.leaves == (0, 1, 2)
    named = lambda edges: {(tree.nodes[a], tree.nodes[b]) for a, b in edges.T}  # noqa: E731
    assert named(tree.stage_one) == {
        ("N02B", "N02"), ("N02A", "N02"), ("N02", "N"), ("N", ATC_ROOT), ("A10B", "A10"), ("A10", "A"), ("A", ATC_ROOT)
    }
    assert named(tree.stage_two) == {(a, leaf) for leaf in ("N02B", "N02A") for a in ("N02", "N", ATC_ROOT)} | {
        (a, "A10B") for a in ("A10", "A", ATC_ROOT)
    }
    assert not set(tree.stage_two[1]) - {0, 1, 2}  # only leaves receive ancestors
    assert not (set(tree.stage_one[1]) & {0, 1, 2})  # leaves receive nothing in stage one
    assert len(tree.nodes) == len(set(tree.nodes)) == 8  # 3 leaves, N02, N, A10, A, root


def test_pretraining_sees_every_training_visit_once(tiny_dataset):
    train = tiny_dataset.samples("train")
    visits = pretraining_visits(train)
    patients = tiny_dataset.patients_in("train")
    assert len(visits) == sum(len(p.visits) for p in patients)
    assert any(len(p.visits) == 1 for p in patients)
    assert {s.patient_id for s in visits} == {p.patient_id for p in patients}
    assert all(not s.history for s in visits)
    by_patient = {p.patient_id: p for p in patients}
    for s in visits:
        visit = by_patient[s.patient_id].visits[s.visit_number - 1]
        assert (s.diagnoses, s.target) == (visit.diagnoses, visit.medications)


@pytest.mark.parametrize("protocol", ["last-visit", "all-visits"])
def test_fine_tuning_trains_on_the_protocols_samples(tiny_dataset, protocol):
    """Each training sample with history is one fine-tuning target (under last-visit one per patient, not
    every visit t >= 2 of its record); pre-training reads every visit of the training patients either way."""
    train, val = tiny_dataset.samples("train", protocol), tiny_dataset.samples("val", protocol)
    model = GBert(tiny_dataset, GBert.Config(**{**FAST, "epochs": 1, "pretrain_epochs": 1}), seed=0).fit(train, val)
    served = [s for s in train if s.history]
    assert model.fit_report["training_samples"] == training_record(served)
    assert model.fit_report["pretraining"] == training_record(pretraining_visits(tiny_dataset.samples("train")))
    batch = model.collate(served[:5])
    assert torch.equal(batch["target"], target_tensor(served[:5], tiny_dataset.n_medications))


def test_masking_touches_only_codes_and_replaces_within_the_modality(tiny_dataset):
    model = GBert(tiny_dataset, GBert.Config(**FAST), seed=0)
    low, high = N_SPECIAL + 10, N_SPECIAL + 20
    tokens = torch.cat([torch.full((4000, 1), CLS), torch.randint(low, high, (4000, 6)), torch.full((4000, 3), PAD)], dim=1)
    masked = model.mask_codes(tokens, low, high)
    changed = masked != tokens
    assert not changed[:, 0].any() and not changed[:, 7:].any()
    codes = tokens[:, 1:7]
    rate = ((masked[:, 1:7] == MASK) | (masked[:, 1:7] != codes)).float().mean()
    assert 0.10 < float(rate) < 0.15  # 15% chosen, of which 10% are kept and ~1% redrawn equal
    replaced = masked[:, 1:7][(masked[:, 1:7] != codes) & (masked[:, 1:7] != MASK)]
    assert len(replaced) > 0 and ((replaced >= low) & (replaced < high)).all()


def scrambled(model):
    """A copy of the fitted network with large random weights, so that any leak shows in the outputs."""
    network = copy.deepcopy(model.network)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0.0, 0.3)
    network.eval()
    return network


def record(model, visits):
    """A sample whose current visit is the last of ``visits``."""
    *history, current = visits
    template = next(s for s in model.dataset.samples("train") if s.history)
    return dataclasses.replace(template, history=tuple(history), diagnoses=current.diagnoses, procedures=current.procedures, target=current.medications, visit_number=len(visits))


def test_a_visit_is_predicted_from_earlier_visits_only(fitted, monkeypatch):
    """The reference's fine-tuning reshape fed the target visit's medications (and later visits) into its
    prediction; here the current visit's medications must not move it, while earlier ones do."""
    model = fitted
    monkeypatch.setattr(model, "network", scrambled(model))
    visits = [Visit((0, 1), (0,), (0, 2)), Visit((2, 3), (1,), (1, 3)), Visit((4,), (2,), (4, 5))]
    proba = model.predict_proba([record(model, visits)])
    other_target = visits[:2] + [Visit((4,), (2,), (0, 1, 7))]
    np.testing.assert_array_equal(model.predict_proba([record(model, other_target)]), proba)
    other_history = [visits[0], Visit((2, 3), (1,), (6, 7)), visits[2]]
    assert not np.allclose(model.predict_proba([record(model, other_history)]), proba, atol=1e-3)


def test_batches_predict_like_one_sample_at_a_time(fitted, tiny_dataset, monkeypatch):
    monkeypatch.setattr(fitted, "network", scrambled(fitted))
    samples = [s for s in tiny_dataset.samples("train") if s.history]
    assert len({len(s.history) for s in samples}) >= 2
    together = fitted.predict_proba(samples)
    alone = np.concatenate([fitted.predict_proba([s]) for s in samples])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


def test_fit_reports_both_stages_and_single_visit_samples_are_refused(fitted, tiny_dataset):
    stages = fitted.fit_report["rounds"][0]
    assert set(stages) == {"pretrain", "finetune"}
    assert fitted.fit_report["pretraining"]["samples"] == sum(len(p.visits) for p in tiny_dataset.patients_in("train"))
    assert fitted.fit_report["epochs_run"] == stages["pretrain"]["epochs_run"] + stages["finetune"]["epochs_run"]
    assert fitted.config.threshold == 0.3 and fitted.stage == "finetune" and fitted.config.batch_size == FAST["batch_size"]
    assert fitted.capabilities.needs_history_medications


def test_alternating_schedule_and_no_pretraining(tiny_dataset):
    train, val = tiny_dataset.samples("train"), tiny_dataset.samples("val")
    alternating = GBert(tiny_dataset, GBert.Config(**{**FAST, "rounds": 2, "epochs": 1, "pretrain_epochs": 1}), seed=0).fit(train, val)
    assert [set(r) for r in alternating.fit_report["rounds"]] == [{"pretrain", "finetune"}] * 2
    assert alternating.fit_report["epochs_run"] == 4
    plain = GBert(tiny_dataset, GBert.Config(**{**FAST, "pretrain_epochs": 0}), seed=0).fit(train, val)
    assert list(plain.fit_report["rounds"][0]) == ["finetune"]
    assert "pretraining" not in plain.fit_report and not plain.capabilities.pretrains_on_training_visits
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        GBert.Config(rounds=0)


def test_paper_preset_is_run_alternative_sh():
    paper, harness = GBert.Config.preset("paper"), GBert.Config.preset("harness")
    assert (paper.rounds, paper.epochs, paper.pretraining_epochs) == (16, 5, 5)
    assert (paper.batch_size, paper.pretrain_batch_size, paper.lr, paper.patience) == (1, 64, 5e-4, None)
    assert GBert.training_budget(paper) == "16 x (pre-training 5 epochs (fixed), 64 visits per step; fine-tuning 5 epochs (fixed), 1 sample per step)"
    assert GBert.training_budget(GBert.Config(pretrain_epochs=0)) == "16 x (fine-tuning 5 epochs (fixed), 1 sample per step)"
    assert (harness.rounds, harness.batch_size, harness.lr, harness.patience) == (1, 32, 2e-3, 10)
    assert (paper.pretrain_selection, paper.pretrain_min_delta, harness.pretrain_selection) == ("rx2rx", 0.0, "rx2rx")
    assert paper.pretrain_lr is None and harness.pretrain_lr is None  # both stages at ``lr``


def test_pretraining_keeps_the_epoch_of_the_chosen_head(tiny_dataset):
    """Pre-training validation scores the ``pretrain_selection`` head (dx->rx: medications from diagnoses)."""
    train, val = tiny_dataset.samples("train"), tiny_dataset.samples("val")
    model = GBert(tiny_dataset, GBert.Config(**{**FAST, "pretrain_selection": "dx2rx"}), seed=0)
    model.network = model.build_network().eval()  # unmasked, no dropout
    with model.in_stage("pretrain"):
        batch = model.collate(pretraining_visits(val)[:4])
        torch.testing.assert_close(model.logits(batch), model.network.pretrain_logits(batch)["dx2rx"])
    with pytest.raises(ValueError, match="pretrain_selection"):
        GBert.Config(pretrain_selection="dx2dx")


def test_pretraining_stage_takes_its_own_learning_rate(tiny_dataset):
    """``pretrain_lr`` sets the pre-training optimizer's rate only; None keeps ``lr`` for both stages."""
    model = GBert(tiny_dataset, GBert.Config(**{**FAST, "lr": 1e-3, "pretrain_lr": 4e-3}), seed=0)
    model.network = model.build_network()
    with model.in_stage("pretrain"):
        assert model.make_optimizer().param_groups[0]["lr"] == 4e-3
    assert model.make_optimizer().param_groups[0]["lr"] == 1e-3
    plain = GBert(tiny_dataset, GBert.Config(**{**FAST, "lr": 1e-3}), seed=0)
    with plain.in_stage("pretrain"):
        assert plain.config.lr == 1e-3


def test_attention_with_dropout_path_equals_fused_attention():
    """The explicit path (taken with attention dropout) computes what ``F.scaled_dot_product_attention`` does:
    at a dropout rate too small to drop anything they agree; padding keys get no weight."""
    torch.manual_seed(0)
    tokens = torch.tensor([[CLS, 5, 6, 7], [CLS, 8, PAD, PAD], [CLS, PAD, PAD, PAD]])
    keys = TokenLayout.of(tokens).keys
    q, k, v = (torch.randn(3, 2, 4, 8) for _ in range(3))
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :])
    torch.testing.assert_close(attention(q, k, v, keys, 0.0), fused)
    torch.testing.assert_close(attention(q, k, v, keys, 1e-12), fused)
    moved = v.clone()
    moved[:, :, 2:] += 100.0  # the padding of the second row and the third row's codes-free padding
    torch.testing.assert_close(attention(q, k, moved, keys, 1e-12)[1:], fused[1:])
