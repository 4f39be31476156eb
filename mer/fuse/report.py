"""What a run writes: metrics.json (one shape for every protocol), predictions.csv,
confusion.png, curves.png; and the results table printed beside the paper's numbers.
Each finished fold's results go to folds/<fold>.json (`fold_record`), from which all of these
are rebuilt without retraining (`fold_from_record`)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from mer.data.protocols import protocol_facts
from mer.fuse.metrics import summarise


def metrics_document(model: str, corpus: str, protocol: str, folds: list, extra: Optional[dict] = None) -> dict:
    """`{"model", "corpus", "protocol", "folds": [{"fold", "dev", "test"}], "summary": {"test": {m: {mean, std}}}}`."""
    rows = [{"fold": f.fold, "best_epoch": f.best_epoch, "dev": f.dev, "test": f.test} for f in folds]
    return {"model": model, "corpus": corpus, "protocol": protocol, "folds": rows,
            "summary": {"dev": summarise([f.dev for f in folds]), "test": summarise([f.test for f in folds])},
            **(extra or {})}


def digest_of_test_ids(ids) -> str:
    """A fold's test set, as config.json records it (fold_test_ids): two runs tested on the same utterances
    have the same digest, whatever their order, seed or dev set."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write(temporary path)`, then rename: a reader (or a rerun after a kill) sees the whole
    file or none of it."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: Path, document: dict) -> None:
    write_atomically(path, lambda p: p.write_text(json.dumps(document, indent=1, default=_jsonable)))


def write_metrics(run_dir: Path, document: dict) -> None:
    write_json(Path(run_dir) / "metrics.json", document)


def fold_record(result) -> dict:
    """A finished fold's results as JSON: enough to rebuild metrics.json, predictions.csv,
    history.json and the plots."""
    return {"fold": result.fold, "best_epoch": result.best_epoch, "history": result.history, "dev": result.dev,
            "test": result.test, "dev_predictions": _predictions_record(result.dev_predictions),
            "test_predictions": _predictions_record(result.test_predictions)}


def fold_from_record(record: dict):
    from mer.fuse.trainer import FoldResult, Predictions

    def predictions(r: dict) -> Predictions:
        return Predictions(list(r["ids"]), np.asarray(r["targets"]), np.asarray(r["outputs"], dtype=np.float32))

    return FoldResult(record["fold"], record["best_epoch"], record["history"], record["dev"], record["test"],
                      predictions(record["dev_predictions"]), predictions(record["test_predictions"]))


def _predictions_record(predictions) -> dict:
    return {"ids": list(predictions.ids), "targets": np.asarray(predictions.targets).tolist(),
            "outputs": np.asarray(predictions.outputs).tolist()}


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_predictions(run_dir: Path, folds: list, labels: Optional[list[str]], dimensions: Sequence[str] = ()) -> None:
    """One row per utterance and split: target and prediction (class names, or values), the class
    probabilities p_<class>; for dimensional labels a target_<D> and a prediction_<D> column per dimension."""
    def write(path: Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if dimensions:
                header = ["fold", "split", "id", *(f"target_{d}" for d in dimensions),
                          *(f"prediction_{d}" for d in dimensions)]
            else:
                header = ["fold", "split", "id", "target", "prediction"]
            header += [f"p_{name}" for name in labels] if labels else []
            writer.writerow(header)
            for fold in folds:
                for split, predictions in (("dev", fold.dev_predictions), ("test", fold.test_predictions)):
                    for i, utt_id in enumerate(predictions.ids):
                        writer.writerow(_prediction_row(fold.fold, split, utt_id, predictions, i, labels))

    write_atomically(Path(run_dir) / "predictions.csv", write)


def _prediction_row(fold, split, utt_id, predictions, i, labels) -> list:
    if labels:
        probs = predictions.outputs[i]
        return [fold, split, utt_id, labels[int(predictions.targets[i])], labels[int(probs.argmax())],
                *(f"{p:.5f}" for p in probs)]
    values = np.concatenate([np.ravel(predictions.targets[i]), np.ravel(predictions.outputs[i])])
    return [fold, split, utt_id, *(f"{value:.4f}" for value in values)]


def plot_confusion(run_dir: Path, folds: list, labels: Optional[list[str]]) -> None:
    """Test confusion summed over folds, row-normalised (recall per true class), counts annotated."""
    if not labels:
        return
    plt = _pyplot()
    counts = np.zeros((len(labels), len(labels)), dtype=int)
    for fold in folds:
        counts += np.asarray(fold.test["confusion"], dtype=int)
    recall = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(recall, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center",
                    color="white" if recall[i, j] > 0.6 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"test confusion ({len(folds)} fold{'s' if len(folds) > 1 else ''})")
    fig.colorbar(image, ax=ax, label="recall")
    fig.tight_layout()
    write_atomically(Path(run_dir) / "confusion.png", lambda path: fig.savefig(path, dpi=120))
    plt.close(fig)


def plot_curves(run_dir: Path, folds: list, monitor: str) -> None:
    """Training loss terms and dev loss / monitored metric per epoch, one line per fold."""
    plt = _pyplot()
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for fold in folds:
        epochs = [h["epoch"] + 1 for h in fold.history]
        loss_ax.plot(epochs, [h["train"]["total"] for h in fold.history], label=f"{fold.fold} train")
        loss_ax.plot(epochs, [h["dev"]["loss"] for h in fold.history], "--", label=f"{fold.fold} dev")
        dev = fold.history[0]["dev"]
        metric = monitor if monitor in dev and monitor != "loss" else next((m for m in ("accuracy", "ccc") if m in dev),
                                                                           "mae")
        metric_ax.plot(epochs, [h["dev"].get(metric, np.nan) for h in fold.history], label=fold.fold)
        metric_ax.axvline(fold.best_epoch + 1, color="grey", lw=0.5)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss (train total, dev task)")
    metric_ax.set(xlabel="epoch", ylabel=metric, title=f"dev {metric} (grey: best epoch)")
    if len(folds) <= 5:
        loss_ax.legend(fontsize=7)
        metric_ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomically(Path(run_dir) / "curves.png", lambda path: fig.savefig(path, dpi=120))
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def results_table(document: dict, paper: Optional[dict] = None) -> str:
    """Each test metric, with the paper's number beside it where there is one: over several folds
    the mean +/- the sample std; one fold's value alone (a std over one fold says nothing)."""
    summary = document["summary"]["test"]
    paper = paper or {}
    n = len(document["folds"])
    how = f"{n} folds, mean +/- std over folds" if n > 1 else "1 fold"
    lines = [f"{document['model']} on {document['corpus']} ({document['protocol']}, {how})",
             "  " + protocol_facts(document["protocol"], document.get("speaker_independent"),
                                   "accuracy" not in summary, "ccc" in summary, document.get("merged"))]
    for source, wer in document.get("text_sources", {}).items():
        lines.append(f"  text from ASR: {source} ({'WER not measured' if wer is None else f'WER {wer:.3f}'})")
    width = max([12, *map(len, summary)])  # per-dimension names (ccc_activation) are longer
    lines.append(f"  {'metric':<{width}} {'ours':>17} {'paper':>8}")
    for metric, stats in summary.items():
        if stats["mean"] is None:
            ours = "n/a"
        else:
            ours = f"{stats['mean']:.4f} +/- {stats['std']:.4f}" if n > 1 else f"{stats['mean']:.4f}"
        theirs = f"{paper[metric]:.4f}" if metric in paper else ""
        lines.append(f"  {metric:<{width}} {ours:>17} {theirs:>8}")
    return "\n".join(lines)
