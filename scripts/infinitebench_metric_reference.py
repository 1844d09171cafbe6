#!/usr/bin/env python3
"""InfiniteBench's own scores of real model predictions, for longctx's metric test.

Run by hand (not in CI) on a checkout of OpenBMB/InfiniteBench:

    python3 scripts/infinitebench_metric_reference.py --repo PATH/TO/InfiniteBench \
        --out crates/longctx-tasks/tests/fixtures/infinitebench_scores.jsonl

It takes the scoring functions of passkey, number_string, kv_retrieval and math_find (and
what they call) from the repository's src/compute_scores.py, unchanged (that module loads a
ROUGE scorer from the network at import, so the functions are lifted out of its syntax tree
rather than imported), and scores the first 60 predictions of each model's results/ file of
those tasks. Each line: task, model, prediction, label, score.
"""
import argparse
import ast
import json
import pathlib
import re
import string

FUNCTIONS = [
    "first_int_match",
    "get_score_one_passkey",
    "get_score_one_number_string",
    "get_score_one_kv_retrieval",
    "get_score_one_math_find",
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repo", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    repo = pathlib.Path(args.repo)
    source = (repo / "src/compute_scores.py").read_text()
    tree = ast.parse(source)
    lifted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in FUNCTIONS]
    namespace = {"re": re, "string": string}
    exec(compile(ast.Module(body=lifted, type_ignores=[]), "compute_scores.py", "exec"), namespace)
    rows = []
    for path in sorted(repo.glob("results/*/preds_*.jsonl")):
        task = path.stem.removeprefix("preds_")
        if task not in ("passkey", "number_string", "kv_retrieval", "math_find"):
            continue
        model = path.parent.name
        with open(path) as f:
            for line in list(f)[:60]:
                eg = json.loads(line)
                pred = eg.get("prediction", eg.get("pred"))
                label = eg.get("ground_truth", eg.get("label"))
                try:
                    score = float(namespace[f"get_score_one_{task}"](pred, label, model))
                except (ValueError, TypeError):
                    # math_find's int() of a float string raises: no score.
                    score = 0.0
                if isinstance(label, list):
                    label = label[0]
                rows.append(dict(task=task, model=model, prediction=pred, label=str(label) if not isinstance(label, float) else repr(label), score=score))
    with open(args.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"{len(rows)} predictions scored")


if __name__ == "__main__":
    main()
