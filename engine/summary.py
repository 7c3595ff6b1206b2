"""The summary of a finished run, in JSON and markdown, derived from its plan alone."""

from __future__ import annotations

from pathlib import Path

from .loading import model_source
from .plan import write_json_atomic
from .structures import Structure


def layer_table(plan: dict) -> list[dict]:
    """Per layer: which sub-blocks are gone and how many channels each kept."""
    model = plan["model"]
    layers = [
        {"layer": i, "attn_removed": False, "mlp_removed": False,
         "mlp_width": model["mlp_width"], "attn_width": model["attn_width"]}
        for i in range(model["num_layers"])
    ]  # fmt: skip
    for step in plan["steps"]:
        structure = Structure.from_dict(step["structure"])
        row = layers[structure.layer]
        if structure.kind == "attn_block":
            row["attn_removed"] = True
        elif structure.kind == "mlp_block":
            row["mlp_removed"] = True
        elif structure.kind == "mlp_channels":
            row["mlp_width"] = structure.width_after
        else:
            row["attn_width"] = structure.width_after
    return layers


def summarize(plan: dict, evaluation: dict | None = None) -> dict:
    steps = plan["steps"]
    per_dimension: dict[str, dict] = {}
    for step in steps:
        entry = per_dimension.setdefault(step["dimension"], {"steps": 0, "seconds": 0.0})
        entry["steps"] += 1
        entry["seconds"] += step.get("seconds", 0.0)
    last = steps[-1] if steps else None
    return {
        "model": model_source(plan["model"]["name_or_path"]),  # never a path of this machine
        "steps": len(steps),
        "ratio": last["ratio"] if last else 0.0,
        "ratio_layers": last.get("ratio_layers", 0.0) if last else 0.0,
        "params": last["params"] if last else plan["model"]["params_dense"],
        "params_dense": plan["model"]["params_dense"],
        "dense_score": plan["dense_score"],
        "final_score": last["score"] if last else plan["dense_score"],
        "chosen_by_user": sum(1 for s in steps if s["chosen_by"] == "user"),
        "per_dimension": per_dimension,
        "layers": layer_table(plan),
        "evaluation": evaluation or {},
        "faithful": plan["settings"].get("faithful"),
    }


def markdown(summary: dict) -> str:
    lines = [
        f"# Pruning summary: {summary['model']}",
        "",
        f"- ratio {summary['ratio']:.3%} of all parameters ({summary['ratio_layers']:.3%} of "
        f"decoder-layer parameters); {summary['params']:,} of {summary['params_dense']:,} kept",
        f"- calibration perplexity {summary['dense_score']:.4f} dense -> "
        f"{summary['final_score']:.4f} pruned",
        f"- {summary['steps']} steps, {summary['chosen_by_user']} chosen by the user"
        + (f"; faithful mode: {summary['faithful']}" if summary["faithful"] else ""),
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
    return "\n".join(lines) + "\n"


def write_summary(folder: Path, plan: dict, evaluation: dict | None = None) -> None:
    summary = summarize(plan, evaluation)
    write_json_atomic(folder / "summary.json", summary)
    (folder / "summary.md").write_text(markdown(summary))
