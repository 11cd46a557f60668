"""External evaluation of a finished run: its fold ensemble scored on any manifest, and the report.

`cohort` is the entry point behind `noduleclip evaluate`: `evaluate_manifest(run, manifest, out)` cuts the
manifest's views with the run's settings into out/cache and writes predictions.csv, patient_predictions.csv
and metrics.json; `evaluate_cohort(run, manifest, out, EvaluationOptions(...))` adds the curves, the
reliability plot and the optional parts below, and writes report.html with report.json beside it. The parts:
`zero_shot` (zero-shot semantic prediction per schema feature in the layout of the paper's Table 3,
`zero_shot_table`), `perturb` (the CT re-rendered as another protocol would before the views are cut,
`parse_perturbations`, `perturb_volume`, `perturbed_views`), `compare` (another model's scores matched by id,
`read_scores`, `compare_model`), `gallery` (the most confident false positives and negatives with their nine
views, `gallery_tiles`, `plot_gallery`) and `stats` (DeLong, Friedman with Nemenyi, Wilcoxon: `delong_test`,
`friedman_nemenyi`, `wilcoxon`; the ablation uses them too). The metrics themselves live in `noduleclip.metrics`.
"""
