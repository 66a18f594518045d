"""Plain-text tables of METRICS dicts, as the commands print them."""

from reid.metrics import METRIC_NAMES


def format_metrics(metrics):
    return "  ".join(f"{k} {100 * metrics[k]:5.1f}" for k in METRIC_NAMES)


def metrics_table(rows):
    """A plain-text table, one row per (name, METRICS), values in percent."""
    width = max(12, *(len(name) for name, _ in rows))
    lines = [f"{'':<{width}}" + "".join(f"{k:>8}" for k in METRIC_NAMES)]
    for name, m in rows:
        lines.append(f"{name:<{width}}" + "".join(f"{100 * m[k]:8.2f}" for k in METRIC_NAMES))
    return "\n".join(lines)


def side_by_side(rows, columns, keys=("mAP", "rank1")):
    """A plain-text table with a row per name of `rows` and, per (title, {name: METRICS})
    of `columns`, the `keys` in percent joined by " / " (missing entries blank)."""
    cells = [[" / ".join(f"{100 * col[name][k]:.2f}" for k in keys) if name in col else "" for _, col in columns]
             for name in rows]
    width = max(12, *(len(name) for name in rows))
    widths = [max(len(title), *(len(row[j]) for row in cells)) + 2 for j, (title, _) in enumerate(columns)]
    lines = [f"{'':<{width}}" + "".join(f"{title:>{w}}" for (title, _), w in zip(columns, widths))]
    for name, row in zip(rows, cells):
        lines.append(f"{name:<{width}}" + "".join(f"{c:>{w}}" for c, w in zip(row, widths)))
    return "\n".join(lines)


def goal_table(goals):
    """A plain-text table of targeted attacks, one row per (name, results.json "goal" entry):
    each of its metrics as clean -> attacked, in percent."""
    width = max(12, *(len(name) for name, _ in goals))
    lines = []
    for name, goal in goals:
        cells = [f"{key} {100 * goal['clean'][key]:.1f} -> {100 * value:.1f}" for key, value in goal["mean"].items()]
        lines.append(f"{name:<{width}}" + "   ".join(cells))
    return "\n".join(lines)
