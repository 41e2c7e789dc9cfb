"""Plain-text tables of evaluation results."""
from __future__ import annotations


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
