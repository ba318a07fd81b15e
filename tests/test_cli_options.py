import click
import pytest

from bench.cli.options import model_entries, parse_settings


def test_settings_parse_json_values_and_reject_malformed_pairs():
    assert parse_settings(["a=1", "b=0.5", "c=true", 'd={"x": 1}', "e=text"]) == {"a": 1, "b": 0.5, "c": True, "d": {"x": 1}, "e": "text"}
    with pytest.raises(click.BadParameter, match="not KEY=VALUE"):
        parse_settings(["lr"])


def test_teacher_reaches_every_config_that_loads_one(tmp_path):
    entries = {e.label: e.overrides for e in model_entries(["freq", "leader_t", "leader_s"], tmp_path, "m.gguf", ["leader_s.alpha=0.8"])}
    teacher = {"teacher_path": str(tmp_path), "gguf_file": "m.gguf"}
    assert entries["freq"] == {}
    assert entries["leader_t"] == teacher
    assert entries["leader_s"] == {"alpha": 0.8, "teacher_overrides": teacher}


def test_per_model_settings_name_a_model_of_the_run():
    with pytest.raises(click.BadParameter, match="MODEL among freq, mlp"):
        model_entries(["freq", "mlp"], None, None, ["gamenet.lr=1e-4"])
    assert model_entries(["mlp"], None, None, ["mlp.lr=0.01"])[0].overrides == {"lr": 0.01}


def test_one_model_can_take_another_preset_and_the_student_distils_from_that_teacher():
    from leader.student import StudentConfig
    from leader.teacher import TeacherConfig

    entries = {e.label: e.overrides for e in model_entries(["leader_t", "leader_s"], None, None, ["leader_t.preset=quick"])}
    assert TeacherConfig.preset("paper", **entries["leader_t"]) == TeacherConfig.preset("quick")
    student = StudentConfig.preset("paper", **entries["leader_s"])
    assert student == StudentConfig.preset("paper", teacher_overrides={"preset": "quick"})  # the paper's student
    assert TeacherConfig.preset(student.teacher_preset, **student.teacher_overrides) == TeacherConfig.preset("quick")
