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
    },
    sweepable={"alpha": "KD weight (Fig. 2)", "beta": "alignment weight (Fig. 3)"},
    baselines=("retain", "gbert", "gamenet", "safedrug", "micron", "cognet", "refine"),  # Table IV's order
)
