"""`--set text_feature=finetuned:RUN_DIR`: each fold reads the features that `mer finetune` extracted with
THAT fold's checkpoint (fine-tuned on the fold's training split only), so no test utterance influenced
its own features. The run's folds must be the fine-tuning's, utterance for utterance (their digests in
RUN_DIR/config.json); a mismatch fails before training, with the flags or the command that fix it."""

from __future__ import annotations

import shlex
from pathlib import Path

from mer.cache.reader import FeatureCache, FeatureInfo
from mer.data.protocols import FoldSet
from mer.errors import CacheError, MerError
from mer.finetune_run import FINETUNED_PREFIX, FinetuneRun, is_finetuned
from mer.fuse.models.base import FusionConfig, accepted_granularities


def fold_features(cache: FeatureCache, corpus: str, model: str, config: FusionConfig, features: dict,
                  fold_set: FoldSet, digests: dict[str, str]) -> dict[str, dict]:
    """fold -> {role: the cache feature it reads} for the folds in `digests` (fold -> its ids' digest): a
    `finetuned:RUN` part becomes `finetuned:NAME@HASH`, the fold's own config; other parts stay as given."""
    parts = {part for name in features.values() if name for part in name.split("+") if is_finetuned(part)}
    runs = {part: matching_run(part, fold_set, digests) for part in parts}

    def resolved(role: str, name: str, fold: str) -> str:
        return "+".join(fold_config(cache, corpus, model, config, role, runs[p], fold) if p in runs else p
                        for p in name.split("+"))

    return {fold: {role: name and resolved(role, name, fold) for role, name in features.items()} for fold in digests}


def matching_run(part: str, fold_set: FoldSet, digests: dict[str, str]) -> FinetuneRun:
    run = FinetuneRun.read(Path(part[len(FINETUNED_PREFIX):]))
    recorded = run.config
    wrong = [fold for fold, digest in digests.items() if recorded["fold_ids"].get(fold) != digest]
    if recorded["protocol"] == fold_set.protocol and not wrong:
        return run
    what = (f"protocol {recorded['protocol']}, not {fold_set.protocol}" if recorded["protocol"] != fold_set.protocol
            else f"other utterances in fold {wrong[0]} (protocol options, seed or corpus differ)")
    flags = ["--protocol", recorded["protocol"], "--seed", str(recorded["seed"])]
    flags += [part for k, v in recorded["protocol_options"].items() for part in ("--protocol-option", f"{k}={v}")]
    raise MerError(f"{part}: fine-tuned on {what}; fuse with its folds ({shlex.join(flags)}), or fine-tune on "
                   f"these: `{retargeted(run.command, fold_set.protocol, run.directory)}`")


def retargeted(command: str, protocol: str, directory: Path) -> str:
    """The fine-tuning command for another protocol (its protocol options dropped), into a new folder;
    every option of the recorded command takes a value, so it reads as pairs."""
    args = shlex.split(command)
    new = {"--protocol": protocol, "--out": f"{directory}-{protocol}"}
    pairs = [(flag, new.get(flag, value)) for flag, value in zip(args[2::2], args[3::2]) if flag != "--protocol-option"]
    return shlex.join(args[:2] + [part for pair in pairs for part in pair])


def fold_config(cache: FeatureCache, corpus: str, model: str, config: FusionConfig, role: str, run: FinetuneRun,
                fold: str) -> str:
    """`finetuned:NAME@HASH`: the config extracted with the fold's checkpoint, of a granularity the model reads."""
    origin = {"run": run.digest, "fold": fold}
    mine = [f for f in cache.configs(corpus, run.feature_name)
            if {k: f.spec.config.get("finetuned", {}).get(k) for k in origin} == origin]
    if not mine:
        raise CacheError(f"{cache.root / corpus}: no features of {run.directory} fold {fold} (it extracts into "
                         f"{run.config['cache']}); run `{run.command}` (it resumes and extracts)")
    accepted = accepted_granularities(config, role)
    fitting = next((group for group in ([f for f in mine if f.spec.granularity == g] for g in accepted) if group),
                   None) if accepted else mine
    if not fitting:
        have = ",".join(sorted({f.spec.granularity for f in mine}))
        option = shlex.quote(f"{run.config['encoder']}.granularity={accepted[0]}")
        raise MerError(f"{cache.root / corpus}: {model} reads {accepted[0]}-level {role}, but the fine-tuned features "
                       f"of fold {fold} are cached at {have} level only; run `{run.command} --set {option}`")
    if len(fitting) > 1:
        granularities = sorted({f.spec.granularity for f in fitting})
        remove = f"mer cache rm {cache.root} {corpus} {fitting[-1].name}@{fitting[-1].config_hash}"
        fix = (f"pass --set {role}_granularity={granularities[0]} (or {', '.join(granularities[1:])})"
               if len(granularities) > 1 else f"remove those not wanted: `{remove}`")
        raise CacheError(f"{cache.root / corpus}: fold {fold} of {run.directory} has several configs {model} can read "
                         f"({_listed(fitting)}); {fix}")
    return f"{fitting[0].name}@{fitting[0].config_hash}"


def _listed(infos: list[FeatureInfo]) -> str:
    return ", ".join(f"{f.name}@{f.config_hash} ({f.spec.granularity}, layers {f.spec.config.get('layers')})"
                     for f in infos)
