"""LEADER as a model family: the student's ablations (Table VI), the DistilLLM-Med alternatives, the
sweepable KD and alignment weights (Figures 2-3), and its teacher. Registered in the
``medrec_bench.families`` entry-point group, so ``bench ablate leader`` and ``bench sweep leader`` work
through it; ``leader.student`` documents each option.
"""

from bench.contract import ModelFamily, Variant

LEADER = ModelFamily(
    name="leader",
    model="leader_s",
    label="LEADER(S)",
    teacher="leader_t",
    teacher_label="LEADER(T)",
    ablations={
        "kd": Variant("w/o KD", {"kd": "none"}, "no distillation: the student alone"),
        "feature-kd": Variant("w/o feature-KD", {"kd": "output"}, "output-level KD instead of eq. 9's feature KD"),
        "align": Variant("w/o align", {"align": False}, "no profile alignment loss"),
        "shared-visit": Variant("w/o shared E_Visit", {"shared_visit_encoder": False}, "separate visit encoders"),
    },
    alternatives={
        "temperature-kd": Variant("temperature KD", {"kd": "temperature"}, "DistilLLM-Med: temperature-scaled output KD"),
        "projector-kd": Variant("projector KD", {"kd": "projector"}, "DistilLLM-Med: projected feature KD"),
        "multi-teacher": Variant(
            "multi-teacher KD", {"teachers": ["minilm", "smollm2"]}, "DistilLLM-Med: MiniLM and SmolLM2-135M at once, weighted by validation loss"
        ),
        "curriculum": Variant("curriculum", {"curriculum": True}, "DistilLLM-Med: samples from easy to hard (the teacher's per-sample loss)"),
        "layer-kd": Variant("layer KD", {"layer_kd": True}, "DistilLLM-Med: two intermediate teacher layers mapped to the student's, beside eq. 9"),
        "specialty-weighting": Variant(
            "specialty-weighted", {"specialty_weighting": True}, "DistilLLM-Med: BCE weighted by ATC main group, rarer groups more"
        ),
        "smollm2-teacher": Variant("SmolLM2 teacher", {"teachers": ["smollm2"]}, "eq. 9 from the SmolLM2-135M decoder instead of MiniLM"),
        "int8-teacher": Variant("int8 teacher", {"teacher_overrides": {"quantization": "int8"}}, "the teacher fine-tuned and run in int8"),
    },
    sweepable={"alpha": "KD weight (Fig. 2)", "beta": "alignment weight (Fig. 3)"},
    baselines=("retain", "gbert", "gamenet", "safedrug", "micron", "cognet", "refine"),  # Table IV's order
)
