"""Plain-text tables, the one-line summary and the Markdown report of evaluation results."""
from __future__ import annotations

from metaad_dist.model.memory import COMPONENTS


def results_table(results: dict[str, dict[str, dict]], title: str) -> str:
    """results[method][family] = metrics; 'overall' first, then families in order."""
    families: list[str] = []
    for per_family in results.values():
        for family in per_family:
            if family not in families:
                families.append(family)
    header = f"{'method':<18} {'family':<16} {'AUROC':>7} {'AUPR':>7} {'FPR@95':>7} {'n_anom':>7}"
    lines = [title, header, "-" * len(header)]
    for family in families:
        for method, per_family in results.items():
            m = per_family.get(family)
            if m is None:
                continue
            lines.append(
                f"{method:<18} {family:<16} {m['auroc']:>7.3f} {m['aupr']:>7.3f} {m['fpr95']:>7.3f} {m['n_anomaly']:>7d}"
            )
    return "\n".join(lines)


def markdown_report(metrics: dict) -> str:
    """A Markdown summary of an evaluation (metrics.json without the raw scores)."""
    lines = [f"# Evaluation of {metrics['run']}", "",
             f"Scaler: {metrics['scaler']}; anomaly-shot budget: {metrics['budget']} per meta family; "
             "anomalies are the positive class."
             + (f" Fusion weights ({', '.join(COMPONENTS)}): {metrics['fusion_weights']}."
                if metrics.get("fusion_weights") else ""), "", "## Held-out families", "",
             "| method | family | AUROC | AUPR | FPR@95 | anomalies |", "|---|---|---|---|---|---|"]
    for method, per_family in metrics["held_out"].items():
        for family, m in per_family.items():
            lines.append(f"| {method} | {family} | {m['auroc']:.3f} | {m['aupr']:.3f} | {m['fpr95']:.3f} | {m['n_anomaly']} |")
    if metrics.get("seen_meta"):
        lines += ["", "## Seen meta families (rows outside the budget pool; secondary)", "",
                  "| method | family | AUROC | AUPR |", "|---|---|---|---|"]
        for method, per_family in metrics["seen_meta"].items():
            for family, m in per_family.items():
                lines.append(f"| {method} | {family} | {m['auroc']:.3f} | {m['aupr']:.3f} |")
    op = metrics["operating_point"]
    lines += ["", "## Operating point (threshold chosen on validation data, max F1)", "",
              f"threshold {op['threshold']:.4f}: precision {op['precision']:.3f}, recall {op['recall']:.3f}, "
              f"F1 {op['f1']:.3f} on the held-out test rows.", "",
              "## AUROC vs budget", "", "| budget | held-out AUROC |", "|---|---|"]
    lines += [f"| {b} | {a:.3f} |" for b, a in metrics["auroc_vs_budget"].items()]
    lines += ["", "![ROC](roc_held_out.png) ![scores](score_histogram.png) ![budget](auroc_vs_budget.png)", ""]
    return "\n".join(lines)


def summary_line(metrics: dict, method: str) -> str:
    """One line: what was trained, on which families, and the held-out AUROC of the method beside
    each baseline; against its inner-loop-only ablation (no outer loop, no normal memory),
    whether the paired difference is outside its 95% interval, so the line never claims a gain
    the run does not show."""
    trained = metrics["trained"]
    parts = []
    for name, per_family in metrics["held_out"].items():
        auroc = per_family["overall"]["auroc"]
        versus = metrics.get("versus_ablation")
        if versus is None or name != versus["baseline"]:
            parts.append(f"{name} {auroc:.3f}")
            continue
        difference, half_width = versus["auroc_difference"], 1.96 * versus["standard_error"]
        verdict = (
            "the method beats its inner loop alone on this run" if difference > half_width
            else "the method trails its inner loop alone on this run" if difference < -half_width
            else "no significant difference, so this run does not show the method beating its inner loop alone"
        )
        parts.append(f"inner-loop-only ablation {auroc:.3f} ({difference:+.3f} ±{half_width:.3f} at 95%: {verdict})")
    ordered = sorted(parts, key=lambda p: not p.startswith(f"{method} "))  # the method first
    return (
        f"summary: {method} trained {trained['episodes']} episodes on normal {', '.join(trained['normal'])} with "
        f"{metrics['budget']} labelled rows each of {', '.join(trained['meta'])} (seed {trained['seed']}); held-out "
        f"AUROC on unseen {', '.join(trained['held_out'])}: " + " vs ".join(ordered)
    )
