"""`mer compare RUN_DIR...`: finished `mer fuse` runs side by side, from their run directories alone.

One table of the runs' test metrics (the headline first: mean +/- std over folds, and their number),
what each protocol means (speaker independence, WA / UA, merged classes), paired tests of every run
against the first, and compare.png (bars with the std over folds as error bars).

Runs are comparable when they share the task, the protocol, the label set and the folds: the same
fold names, each testing the same utterances (config.json's fold_test_ids; older runs: the test rows
of predictions.csv). Anything else is refused in one line unless `allow_mismatch`; a regression run
and a classification run are always refused (their metrics have nothing in common).

Paired tests use only folds with the same name and the same test utterances in both runs: over 2+
folds, a paired t-test and the Wilcoxon signed-rank test on the per-fold scores; over one fold (a
single-split protocol), McNemar's exact test on which test utterances each run got right."""

from __future__ import annotations

import csv
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from mer.data.protocols import headline_metric, protocol_facts
from mer.errors import MerError
from mer.fuse.report import _pyplot, digest_of_test_ids, write_atomically

ALLOW = "--allow-mismatch"
ALPHA = 0.05
ROLES = {"accuracy": "WA", "ua": "UA"}  # the names papers use for these metrics
PLOT = "compare.png"


@dataclass
class Run:
    """A finished run directory: its config.json and metrics.json, predictions.csv read when needed."""

    path: Path
    name: str
    config: dict
    metrics: dict
    _test_rows: Optional[list[dict]] = field(default=None, repr=False)

    @property
    def protocol(self) -> str:
        return self.metrics["protocol"]

    @property
    def task(self) -> str:
        summary = self.metrics["summary"]["test"]
        return "classification" if "accuracy" in summary else ("dimensional" if "ccc" in summary else "regression")

    @property
    def labels(self) -> Optional[list[str]]:
        return self.config.get("labels")

    @property
    def fold_names(self) -> list[str]:
        return [f["fold"] for f in self.metrics["folds"]]

    def scores(self, metric: str) -> dict[str, Optional[float]]:
        """Fold name -> its test score (None where undefined)."""
        return {f["fold"]: _finite(f["test"].get(metric)) for f in self.metrics["folds"]}

    def test_digests(self) -> dict[str, str]:
        """Fold name -> the digest of its test ids, as recorded, or from predictions.csv for older runs."""
        recorded = self.config.get("fold_test_ids")
        if recorded:
            return {name: recorded.get(name) for name in self.fold_names}
        return {name: digest_of_test_ids([r["id"] for r in self.test_rows() if r["fold"] == name])
                for name in self.fold_names}

    def correct(self, fold: str) -> dict[str, bool]:
        """Test utterance id -> whether the run predicted its class."""
        return {r["id"]: r["target"] == r["prediction"] for r in self.test_rows() if r["fold"] == fold}

    def test_rows(self) -> list[dict]:
        if self._test_rows is None:
            path = self.path / "predictions.csv"
            try:
                with open(path, newline="", encoding="utf-8") as f:
                    self._test_rows = [row for row in csv.DictReader(f) if row.get("split") == "test"]
            except OSError as exc:
                raise MerError(f"{path}: unreadable ({exc.strerror}); rebuild it: "
                               f"{_resume_command(self.config, self.path)}") from None
        return self._test_rows


def compare_runs(paths: list[Path], metric: Optional[str] = None, allow_mismatch: bool = False,
                 out: Path = Path(".")) -> dict:
    """The comparison as a JSON-able document; writes `out`/compare.png. Refuses (MerError) runs that
    are not comparable unless `allow_mismatch`, whose differences the document then lists."""
    runs = load_runs(paths)
    differences = mismatches(runs)
    if differences and not allow_mismatch:
        raise MerError(f"runs not comparable: {'; '.join(differences)}; to compare them anyway: "
                       f"{_compare_command(paths, metric, allow_mismatch=True)}")
    metric = metric or headline_metric(runs[0].protocol, runs[0].task != "classification", runs[0].task == "dimensional")
    _check_metric(runs, metric, paths, allow_mismatch)
    document = {"metric": metric, "runs": [_run_entry(run, _shown_metrics(runs, metric)) for run in runs],
                "protocols": {run.protocol: protocol_facts(run.protocol, run.metrics.get("speaker_independent"),
                                                           run.task != "classification", run.task == "dimensional",
                                                           run.metrics.get("merged"))
                              for run in runs},
                "mismatches": differences, "comparisons": [paired(runs[0], run, metric) for run in runs[1:]]}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    document["plot"] = str(out / PLOT)
    plot_comparison(document, out / PLOT)
    return document


def load_runs(paths: list[Path]) -> list[Run]:
    paths = [Path(p) for p in paths]
    seen: dict[Path, Path] = {}
    for path in paths:
        first = seen.setdefault(path.resolve(), path)
        if first is not path:
            also = f" (also as {first})" if str(first) != str(path) else ""
            raise MerError(f"{path}: given twice{also}; give each run once")
    names = [p.resolve().name for p in paths]
    if len(set(names)) < len(names):  # runs/a/full and runs/b/full: name them by the path given
        names = [str(p) for p in paths]
    return [load_run(path, name) for path, name in zip(paths, names)]


def load_run(path: Path, name: str) -> Run:
    if not (path / "config.json").is_file():
        raise MerError(f"{path}: not a mer fuse run directory (no config.json); pass the --out folder of a run")
    config = _read_json(path / "config.json", "pass the --out folder of a mer fuse run")
    if not (path / "metrics.json").is_file():
        raise MerError(f"{path}: the run has not finished (no metrics.json); finish it: "
                       f"{_resume_command(config, path)}")
    return Run(path, name, config, _read_json(path / "metrics.json", f"rebuild it: {_resume_command(config, path)}"))


def _read_json(path: Path, fix: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MerError(f"{path}: unreadable ({exc}); {fix}") from None


def _resume_command(config: dict, path: Path) -> str:
    """The `mer fuse` command that finishes (or rebuilds the files of) the run: the same command resumes."""
    from mer.fuse.run import fuse_command  # torch, only on this error path

    try:
        return fuse_command(config, path)
    except KeyError:  # a config.json of another version
        return f"the mer fuse command that wrote {path}, again"


def _compare_command(paths: list[Path], metric: Optional[str], allow_mismatch: bool) -> str:
    return shlex.join(["mer", "compare", *map(str, paths), *(["--metric", metric] if metric else []),
                       *([ALLOW] if allow_mismatch else [])])


# ----------------------------------------------------------------------------- what may be compared

def mismatches(runs: list[Run]) -> list[str]:
    """What makes each run not comparable with the first, a phrase each; runs of another task are refused."""
    reference = runs[0]
    found = []
    for run in runs[1:]:
        if run.task != reference.task:
            raise MerError(f"{run.name} is a {run.task} run, {reference.name} a {reference.task} run: their metrics "
                           "cannot be compared; compare runs of one task")
        found += [f"{run.name} vs {reference.name}: {line}" for line in _differences(reference, run)]
    return found


def _differences(reference: Run, run: Run) -> list[str]:
    if run.protocol != reference.protocol:
        return [f"protocol {run.protocol} vs {reference.protocol}"]  # folds and labels follow from it
    lines = []
    if run.labels != reference.labels:
        lines.append(f"label set {_listed(run.labels)} vs {_listed(reference.labels)}")
    if run.fold_names != reference.fold_names:
        lines.append(f"folds {_listed(run.fold_names)} vs {_listed(reference.fold_names)}")
    else:
        ours, theirs = run.test_digests(), reference.test_digests()
        changed = [name for name in ours if ours[name] != theirs[name]]
        if changed:
            several = len(changed) > 1
            lines.append(f"fold{'s' if several else ''} {_listed(changed)} test{'' if several else 's'} other "
                         "utterances (another corpus, seed or protocol option)")
    return lines


def _listed(values: Optional[list[str]], most: int = 4) -> str:
    if values is None:
        return "none"
    shown = ",".join(values[:most])
    return shown + (f",... ({len(values)})" if len(values) > most else "")


def _check_metric(runs: list[Run], metric: str, paths: list[Path], allow_mismatch: bool) -> None:
    shared = [m for m in runs[0].metrics["summary"]["test"] if all(m in r.metrics["summary"]["test"] for r in runs)]
    for run in runs:
        if metric not in run.metrics["summary"]["test"]:
            raise MerError(f"{run.name} has no test metric {metric!r} (the runs share {', '.join(shared)}); "
                           f"compare on one of those: {_compare_command(paths, shared[0], allow_mismatch)}")


def _shown_metrics(runs: list[Run], metric: str) -> list[str]:
    """The compared metric, then WA and UA where every run has them."""
    extra = [m for m in ROLES if m != metric and all(m in r.metrics["summary"]["test"] for r in runs)]
    return [metric, *extra]


def _run_entry(run: Run, metrics: list[str]) -> dict:
    summary = run.metrics["summary"]["test"]
    return {"run": run.name, "path": str(run.path.resolve()), "model": run.metrics.get("model"),
            "corpus": run.metrics.get("corpus"), "protocol": run.protocol,
            "speaker_independent": run.metrics.get("speaker_independent"), "folds": len(run.fold_names),
            "metrics": {m: summary[m] for m in metrics}, "per_fold": run.scores(metrics[0])}


# ----------------------------------------------------------------------------- paired tests

def paired(reference: Run, run: Run, metric: str) -> dict:
    """`run` against `reference` on the folds both test on the same utterances: fold-level tests over
    2+ folds, McNemar's exact test over one fold of classification, else none (with the reason)."""
    folds = _matching_folds(reference, run, metric)
    entry = {"run": run.name, "against": reference.name, "metric": metric, "folds": folds}
    if len(folds) >= 2:
        return {**entry, **_fold_tests(reference, run, folds, metric)}
    if len(folds) == 1 and run.task == "classification":
        return {**entry, **_mcnemar(reference, run, folds[0])}
    why = "one fold of regression: no per-utterance correctness to test" if folds else \
        "no fold tests the same utterances in both runs"
    return {**entry, "unit": None, "n": 0, "tests": [], "note": f"no paired test: {why}"}


def _matching_folds(reference: Run, run: Run, metric: str) -> list[str]:
    ours, theirs = run.test_digests(), reference.test_digests()
    a, b = reference.scores(metric), run.scores(metric)
    return [name for name in reference.fold_names
            if name in ours and ours[name] == theirs[name] and a[name] is not None and b.get(name) is not None]


def _fold_tests(reference: Run, run: Run, folds: list[str], metric: str) -> dict:
    from scipy import stats

    a = np.array([reference.scores(metric)[f] for f in folds])
    b = np.array([run.scores(metric)[f] for f in folds])
    differences = b - a
    nonzero = int(np.count_nonzero(differences))
    tests = [_test("paired t-test", "t", lambda: stats.ttest_rel(b, a),
                   skip="every fold differs by the same amount: no spread to test" if np.ptp(differences) == 0
                   else None),
             _test("Wilcoxon signed-rank", "W", lambda: stats.wilcoxon(b, a),
                   skip=None if nonzero else "identical scores in every fold", caveat=_wilcoxon_floor(nonzero))]
    return {"unit": "folds", "n": len(folds), "mean_difference": float(differences.mean()), "tests": tests}


def _test(name: str, symbol: str, run_test, skip: Optional[str] = None, caveat: Optional[str] = None) -> dict:
    """The test's statistic and p, or, when `skip` says why it cannot run, None and the reason."""
    if skip:
        return {"name": name, "symbol": symbol, "statistic": None, "p": None, "note": skip}
    result = run_test()
    return {"name": name, "symbol": symbol, "statistic": _finite(result.statistic), "p": _finite(result.pvalue),
            "note": caveat}


def _wilcoxon_floor(n: int) -> Optional[str]:
    """Over n nonzero differences the exact two-sided p is at least 2 / 2**n: 0.0625 for 5 folds."""
    floor = 2 / 2 ** n
    if floor < ALPHA:
        return None
    return f"over {n} differing folds its smallest two-sided p is {floor:.4g}: p<{ALPHA:g} is out of reach"


def _mcnemar(reference: Run, run: Run, fold: str) -> dict:
    from scipy import stats

    a, b = reference.correct(fold), run.correct(fold)
    ids = sorted(a.keys() & b.keys())
    only_run = sum(b[i] and not a[i] for i in ids)
    only_reference = sum(a[i] and not b[i] for i in ids)
    discordant = only_run + only_reference
    p = stats.binomtest(only_run, discordant, 0.5).pvalue if discordant else 1.0
    test = {"name": "McNemar's exact test", "symbol": None, "statistic": only_run, "p": float(p),
            "note": f"{only_run} test utterances right only in {run.name}, {only_reference} only in {reference.name}"}
    accuracy = (sum(b[i] for i in ids) - sum(a[i] for i in ids)) / max(len(ids), 1)
    return {"unit": "test utterances", "n": len(ids), "fold": fold, "accuracy_difference": accuracy,
            "tests": [test]}


def _finite(value) -> Optional[float]:
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------- output

def format_comparison(document: dict) -> str:
    metrics = list(document["runs"][0]["metrics"])
    header = ["run", "model", "corpus", "protocol", "folds", *(_metric_title(m) for m in metrics)]
    rows = [[r["run"], r["model"], r["corpus"], r["protocol"], str(r["folds"]),
             *(_mean_std(r["metrics"][m], r["folds"]) for m in metrics)] for r in document["runs"]]
    lines = _aligned([header, *rows])
    lines += [f"protocol {facts}" for facts in document["protocols"].values()]
    lines += [f"compared anyway ({ALLOW}): {line}" for line in document["mismatches"]]
    if document["comparisons"]:
        # McNemar pairs utterances, right or wrong: what it tests is accuracy, whatever the table's metric.
        by_folds = any(c["unit"] == "folds" for c in document["comparisons"])
        tested = f"test {document['metric']}" if by_folds else "which test utterances each run got right (accuracy)"
        lines.append(f"paired tests on {tested}, each run against {document['runs'][0]['run']}:")
        lines += [line for comparison in document["comparisons"] for line in _comparison_lines(comparison)]
    lines.append(f"plot: {document['plot']}")
    return "\n".join(lines)


def _metric_title(metric: str) -> str:
    return f"{metric} ({ROLES[metric]})" if metric in ROLES else metric


def _mean_std(stats: dict, folds: int) -> str:
    """One fold's value alone: a std over one fold says nothing."""
    if stats["mean"] is None:
        return "n/a"
    return f"{stats['mean']:.4f} +/- {stats['std']:.4f}" if folds > 1 else f"{stats['mean']:.4f}"


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def _comparison_lines(comparison: dict) -> list[str]:
    name = comparison["run"]
    if comparison["unit"] is None:
        return [f"  {name}: {comparison['note']}"]
    difference = f"  {name} - {comparison['against']} = "
    if comparison["unit"] == "folds":
        head = (f"{difference}{comparison['mean_difference']:+.4f} {comparison['metric']} (mean over "
                f"{comparison['n']} folds that test the same utterances)")
    else:
        head = (f"{difference}{comparison['accuracy_difference']:+.4f} accuracy (over fold {comparison['fold']}'s "
                f"{comparison['n']} test utterances)")
    return [head, *(f"    {_test_line(test)}" for test in comparison["tests"])]


def _test_line(test: dict) -> str:
    if test["p"] is None:
        return f"{test['name']}: not run ({test['note']})"
    shown = f"{test['symbol']} = {test['statistic']:.3f}, " if test["symbol"] else ""
    return f"{test['name']}: {shown}p = {test['p']:.4g}" + (f" ({test['note']})" if test["note"] else "")


def plot_comparison(document: dict, path: Path) -> None:
    """One bar per run: the mean test score, the std over folds as its error bar (none for one fold)."""
    plt = _pyplot()
    metric, runs = document["metric"], document["runs"]
    means = [_nan_if_none(r["metrics"][metric]["mean"]) for r in runs]
    spread = [i for i, r in enumerate(runs) if r["folds"] > 1]
    fig, ax = plt.subplots(figsize=(2 + 1.2 * len(runs), 4))
    bars = ax.bar(range(len(runs)), means, color="tab:blue", alpha=0.8)
    ax.errorbar(spread, [means[i] for i in spread], yerr=[_nan_if_none(runs[i]["metrics"][metric]["std"])
                                                          for i in spread], fmt="none", ecolor="black", capsize=5)
    ax.bar_label(bars, labels=[f"{r['folds']} fold{'s' if r['folds'] > 1 else ''}" for r in runs], fontsize=8,
                 label_type="center", color="white")
    ax.set_xticks(range(len(runs)), [r["run"] for r in runs], rotation=20, ha="right")
    ax.set_ylabel(f"test {_metric_title(metric)}")
    ax.set_title(f"test {metric}: mean +/- std over folds")
    fig.tight_layout()
    write_atomically(path, lambda p: fig.savefig(p, dpi=120))
    plt.close(fig)


def _nan_if_none(value) -> float:
    return math.nan if value is None else value
