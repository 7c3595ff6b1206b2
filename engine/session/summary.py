"""The summary of a finished run, in JSON and markdown, derived from its plan alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..names import model_source
from ..search.methods import DEFAULT_METHOD
from ..search.plan import Plan, as_plan
from .disk import write_bytes_atomic, write_json_atomic
from .files import SUMMARY_JSON, SUMMARY_MD


def layer_table(plan: Plan | dict) -> list[dict]:
    """Per layer: which sub-blocks are gone and how many channels each kept."""
    return [dataclasses.asdict(row) for row in as_plan(plan).layer_rows()]


def summarize(plan: Plan | dict, evaluation: dict | None = None) -> dict:
    plan = as_plan(plan)
    steps = plan.steps
    counts: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for step in steps:
        counts[step.dimension] = counts.get(step.dimension, 0) + 1
        seconds[step.dimension] = seconds.get(step.dimension, 0.0) + step.seconds
    per_dimension = {name: {"steps": n, "seconds": seconds[name]} for name, n in counts.items()}
    last = plan.last
    return {
        "model": model_source(plan.model.name_or_path),  # never a path of this machine
        "steps": len(steps),
        "ratio": plan.ratio,
        "ratio_layers": last.ratio_layers if last else 0.0,
        "params": last.params if last else plan.model.params_dense,
        "params_dense": plan.model.params_dense,
        "dense_score": plan.dense_score,
        "final_score": last.score if last else plan.dense_score,
        "chosen_by_user": sum(1 for s in steps if s.chosen_by == "user"),
        "per_dimension": per_dimension,
        "layers": layer_table(plan),
        "evaluation": evaluation or {},
        "faithful": plan.settings.get("faithful"),
        "fast": bool(plan.settings.get("fast")),
        "method": plan.settings.get("method", DEFAULT_METHOD),  # older plans: MultiPruner's
    }


def markdown(summary: dict) -> str:
    lines = [
        f"# Pruning summary: {summary['model']}",
        "",
        f"- ratio {summary['ratio']:.3%} of all parameters ({summary['ratio_layers']:.3%} of "
        f"decoder-layer parameters); {summary['params']:,} of {summary['params_dense']:,} kept",
        f"- calibration perplexity {summary['dense_score']:.4f} dense -> "
        f"{summary['final_score']:.4f} pruned",
        f"- {summary['steps']} steps of {summary['method']}, {summary['chosen_by_user']} chosen "
        "by the user"
        + (f"; faithful mode: {summary['faithful']}" if summary["faithful"] else "")
        + ("; fast search (--fast), an approximation" if summary["fast"] else ""),
        "",
        "| dimension | steps | seconds |",
        "|---|---|---|",
        *(
            f"| {name} | {entry['steps']} | {entry['seconds']:.1f} |"
            for name, entry in summary["per_dimension"].items()
        ),
        "",
        "| layer | attention | MLP | MLP width kept | attention channels kept |",
        "|---|---|---|---|---|",
        *(
            f"| {row['layer']} | {'removed' if row['attn_removed'] else 'kept'} | "
            f"{'removed' if row['mlp_removed'] else 'kept'} | "
            f"{0 if row['mlp_removed'] else row['mlp_width']} | "
            f"{0 if row['attn_removed'] else row['attn_width']} |"
            for row in summary["layers"]
        ),
    ]
    if summary["evaluation"]:
        lines += ["", "| task | score |", "|---|---|"]
        lines += [f"| {task} | {value} |" for task, value in summary["evaluation"].items()]
        lines += side_by_side(summary["evaluation"])
    return "\n".join(lines) + "\n"


def side_by_side(evaluation: dict) -> list[str]:
    """Once a session is recovered: one row per metric, dense, pruned and recovered columns."""
    columns = ("dense", "pruned", "recovered")
    if not any(key.endswith("(recovered)") for key in evaluation):
        return []
    rows: dict[str, dict[str, object]] = {}
    for key, value in evaluation.items():
        metric, _, which = key.rpartition(" (")
        rows.setdefault(metric, {})[which.rstrip(")")] = value
    lines = ["", "| metric | dense | pruned | recovered |", "|---|---|---|---|"]
    for metric, values in rows.items():
        lines.append(f"| {metric} | " + " | ".join(str(values.get(c, "—")) for c in columns) + " |")
    return lines


def write_summary(folder: Path, plan: Plan | dict, evaluation: dict | None = None) -> None:
    summary = summarize(plan, evaluation)
    write_json_atomic(folder / SUMMARY_JSON, summary)
    write_bytes_atomic(folder / SUMMARY_MD, markdown(summary).encode())
