"""Draw the AP50 curves that benchmarks/shapes_recipe.py recorded: AP50 against DETR steps and
against CPU minutes (pretraining included), one line per probe, and print them as a table.

    python benchmarks/plot_recipe_curves.py benchmarks/results/shapes_recipe.jsonl --out curves.png
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="JSON lines written by shapes_recipe.py --results")
    parser.add_argument("--out", default="shapes_recipe_curves.png")
    parser.add_argument("--only", nargs="*", default=None, help="probe names to draw (default: all)")
    args = parser.parse_args()
    with open(args.results, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    if args.only:
        records = [r for r in records if r["name"] in args.only]
    fig, (by_step, by_cpu) = plt.subplots(1, 2, figsize=(11, 4))
    for r in records:
        curve = r.get("curve", [])
        if not curve:
            continue
        pretrain_min = (r.get("pretrain_cpu_s") or 0) / 60   # runs that found the weights cached carry
        label = f"{r['name']} (pretrain {pretrain_min:.1f} CPU min)"  # the CPU time of their making
        cpu = [c["train_cpu_s"] / 60 + pretrain_min for c in curve]
        by_step.plot([c["step"] for c in curve], [c["AP50"] for c in curve], marker="o", label=label)
        by_cpu.plot(cpu, [c["AP50"] for c in curve], marker="o", label=label)
        print(r["name"])
        for c, minutes in zip(curve, cpu):
            print(f"  step {c['step']:5d}  CPU {minutes:5.1f} min  "
                  f"AP50 {c['AP50']:.3f}  AP {c['AP']:.3f}  val class_error {c['val_class_error']:.1f}")
    by_step.set(xlabel="DETR steps", ylabel="AP50 (shapes val)", title="AP50 against steps")
    by_cpu.set(xlabel="CPU minutes, pretraining included", ylabel="AP50", title="AP50 against CPU time")
    for ax in (by_step, by_cpu):
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
    by_step.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
