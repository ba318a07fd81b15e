"""How often the harness's default test rejects a true null, on simulated test sets of a chosen size.

    python benchmarks/null_rejection.py [--patients 635] [--multi-share 0.86] [--test-sets 1000] [--resamples 1000] [--seeds 1]

Two models whose per-patient PRAUC share a patient effect (correlation about 0.7) and are equal in
expectation are compared by ``bench.evaluate.compare`` (paired, stratified bootstrap of test patients; with
``--seeds`` > 1, seed effects of sd ``--seed-sd`` and the seed variance term), as ``tests/test_evaluate.py``
does at 200 patients. Prints the share of test sets with p < 0.05 (the nominal level is 5%) and its binomial
95% interval; ``--effect`` plants a real difference to show the power instead. The default size is the
synthetic cohort's test set (635 of 6,350 patients, 8:1:1; 86% multi-visit).
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.evaluate import cell_values, collect, compare, draw_resamples


def per_sample(values: np.ndarray) -> dict[str, np.ndarray]:
    return {"prauc": values, "jaccard": values, "f1": values, "precision": values, "recall": values, "n_pred": values * 0 + 2,
            "ddi_pairs": np.zeros_like(values), "all_pairs": np.ones_like(values)}


def simulated_p(rng: np.random.Generator, args: argparse.Namespace) -> float:
    n = args.patients
    base = rng.normal(0.6, 0.15, n)
    stratum = (rng.random(n) < args.multi_share).astype(int)
    members = {"overall": np.ones(n, bool), "multi": stratum == 1, "single": stratum == 0}
    draws = draw_resamples(np.arange(n), stratum, "bootstrap", args.resamples, int(rng.integers(2**31)))

    def model(shift: float):
        runs = [base + shift + rng.normal(0, args.seed_sd if args.seeds > 1 else 0.0) + rng.normal(0, 0.1, n) for _ in range(args.seeds)]
        return collect([cell_values(per_sample(v), np.ones(n, bool), members, draws) for v in runs])

    return compare(model(args.effect)["overall"]["prauc"], model(0.0)["overall"]["prauc"], "bootstrap", n)["p"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=635)
    parser.add_argument("--multi-share", type=float, default=0.86)
    parser.add_argument("--test-sets", type=int, default=1000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--seed-sd", type=float, default=0.02)
    parser.add_argument("--effect", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    rejected = np.array([simulated_p(rng, args) < 0.05 for _ in range(args.test_sets)])
    share = rejected.mean()
    half = 1.96 * np.sqrt(share * (1 - share) / len(rejected))
    what = "power against a planted difference" if args.effect else "rejections of a true null"
    print(f"{args.patients} test patients ({args.multi_share:.0%} multi-visit), {args.seeds} seed(s), {args.resamples} resamples: "
          f"{what} in {share:.1%} ± {half:.1%} of {len(rejected)} simulated test sets")


if __name__ == "__main__":
    main()
