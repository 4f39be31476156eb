"""The `mer` command. Choices come from the registries; errors print one line, no traceback.

Exit status: 0 done; 1 the work ran but did not succeed (a --strict stop, a feature with
every utterance failed, `cache verify` found problems); 2 bad input or usage, or a cache or run
that is damaged or changed under the command (each a one-line error naming the fix); 130 interrupted."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

import click

from mer import __version__
from mer.cache.layout import existing_cache_folder
from mer.errors import MerError


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except MerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # last resort: one no layer turned into a MerError is still one line
        paths = " -> ".join(str(path) for path in (exc.filename, exc.filename2) if path is not None)
        click.echo(f"error: {paths + ': ' if paths else ''}{exc.strerror or exc}", err=True)
        sys.exit(2)
    except SystemExit:
        raise


@click.group()
@click.version_option(__version__, prog_name="mer")
def cli() -> None:
    """Multimodal (speech + text) emotion recognition: extract features once, fuse many times."""


def _corpus_names() -> list[str]:
    from mer.data.corpora import CORPORA

    return CORPORA.names()


def parse_settings(settings: tuple[str, ...], features: list[str]) -> tuple[dict, dict]:
    """`--set corpus.labels=7class --set mfcc40.n_mels=40` -> corpus options, per-feature options."""
    corpus_options: dict = {}
    feature_options: dict = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        target, dot, option = key.rpartition(".")
        if not sep or not dot or not option:
            raise MerError(f"--set {setting!r}: write TARGET.KEY=VALUE, e.g. corpus.labels=7class or mfcc40.n_mels=40")
        if target == "corpus":
            corpus_options[option] = value
        elif target in features:
            feature_options.setdefault(target, {})[option] = value
        else:
            raise MerError(f"--set {setting!r}: {target!r} is neither 'corpus' nor one of --features")
    return corpus_options, feature_options


_CORPUS_RUN_OPTIONS = [  # what `mer extract` and `mer transcribe` share: the corpus, the cache, how the work runs
    click.option("--dataset", required=True, help="Corpus reader: " + ", ".join(_corpus_names())),
    click.option("--root", type=click.Path(path_type=Path), help="Corpus folder (or manifest file); demo needs none."),
    click.option("--cache", required=True, type=click.Path(path_type=Path), help="Feature cache folder (shared)."),
    click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
                 help="Worker processes (> 1: a local dask cluster)."),
    click.option("--scheduler", metavar="ADDR", help="Submit to an existing dask.distributed scheduler "
                 "(tcp://host:8786)."),
    click.option("--decode-workers", type=click.IntRange(min=0), help="Decoder processes beside compute (0: a "
                 "thread; default: one per spare core, at most 8)."),
    click.option("--threads", type=click.IntRange(min=1), help="Torch threads for the forward passes "
                 "(default: torch's own; on a small shared CPU 1 is often fastest)."),
    click.option("--strict", is_flag=True, help="Stop at the first utterance that fails (default: record it, go on)."),
    click.option("--retry-failed", is_flag=True, help="Try again the utterances that failed in earlier runs."),
    click.option("--shard-size", default=128, show_default=True, type=click.IntRange(min=1),
                 help="Utterances per shard (the unit of resume)."),
    click.option("--batch-seconds", type=click.FloatRange(min=0, min_open=True), help="Audio seconds per batch, "
                 "padding included (default: 60 on CUDA, 15 on CPU, where big padded batches run slower)."),
    click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True,
                 help="auto: CUDA when present (decided on each worker with --scheduler)."),
    click.option("--no-progress", is_flag=True, help="No progress bar."),
    click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
]


def _corpus_run_options(command):
    for option in reversed(_CORPUS_RUN_OPTIONS):
        command = option(command)
    return command


def _feature_names(ctx, param, value: str) -> list[str]:
    """--features (a click callback): the comma-separated names, at least one."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise click.BadParameter("no feature named; e.g. --features minilm-l6 (see `mer list extractors`)")
    return names


@cli.command()
@_corpus_run_options
@click.option("--features", "names", required=True, callback=_feature_names,
              help="Comma-separated extractor names (see `mer list extractors`).")
@click.option("--set", "settings", multiple=True, metavar="TARGET.KEY=VALUE",
              help="An option for the corpus reader (corpus.KEY) or one feature (FEATURE.KEY). Repeatable.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), help="Storage dtype for every feature "
              "(default: each extractor's own; openSMILE stores float32).")
@click.option("--compression", type=click.Choice(["gzip", "lzf"]), help="HDF5 compression of shard data.")
def extract(dataset, root, names, cache, workers, scheduler, decode_workers, threads, strict, retry_failed, settings,
            shard_size, batch_seconds, device, dtype, compression, no_progress, as_json) -> None:
    """Decode a corpus once and write every requested feature into the cache (resumable)."""
    from mer.extract.runner import ExtractConfig, extract as run_extract, format_report, format_summary

    corpus_options, feature_options = parse_settings(settings, names)
    config = ExtractConfig(dataset=dataset, root=root, features=names, cache=cache, corpus_options=corpus_options,
                           feature_options=feature_options, workers=workers, scheduler=scheduler,
                           decode_workers=decode_workers, threads=threads, strict=strict,
                           retry_failed=retry_failed, shard_size=shard_size, batch_seconds=batch_seconds,
                           device=device, dtype=dtype, compression=compression, progress=not no_progress)
    summary = run_extract(config, on_report=lambda report: click.echo(format_report(report), err=True))
    _finish_run(summary, _summary_dict(summary) if as_json else None, format_summary(summary))


def _finish_run(summary, as_json: Optional[dict], text: str) -> None:
    """Print the summary (JSON or text); exit 130 when interrupted, else by the summary's outcome."""
    click.echo(json.dumps(as_json, indent=1) if as_json is not None else text)
    if summary.stopped and summary.stopped.startswith("interrupted"):
        sys.exit(130)
    sys.exit(summary.exit_code)


@cli.command()
@_corpus_run_options
@click.option("--asr", required=True, metavar="MODEL", help="whisper-tiny, whisper-base, whisper-small, "
              "whisper-medium, whisper-large-v2, whisper-large-v3, whisper-large-v3-turbo, or hf-whisper:PATH_OR_ID.")
@click.option("--language", help="Whisper language code or name (en, english); default: detected per clip.")
@click.option("--task", default="transcribe", show_default=True, type=click.Choice(["transcribe", "translate"]))
@click.option("--num-beams", default=1, show_default=True, type=click.IntRange(min=1), help="Beam size (1: greedy).")
@click.option("--max-new-tokens", default=440, show_default=True, type=click.IntRange(1, 444),
              help="Tokens generated per 30 s window at most.")
@click.option("--set", "settings", multiple=True, metavar="corpus.KEY=VALUE", help="An option for the corpus reader.")
def transcribe(asr, language, task, num_beams, max_new_tokens, settings, dataset, root, cache, workers, scheduler,
               decode_workers, threads, strict, retry_failed, shard_size, batch_seconds, device, no_progress,
               as_json) -> None:
    """Whisper transcripts of a corpus's audio into the cache as the text source asr:MODEL@HASH
    (resumable); prints the WER against the corpus's own transcripts."""
    from mer.extract.runner import ExtractConfig, format_report
    from mer.transcribe import format_transcribe_summary, transcribe as run_transcribe

    corpus_options, _ = parse_settings(settings, [])
    config = ExtractConfig(dataset=dataset, root=root, features=[], cache=cache, corpus_options=corpus_options,
                           workers=workers, scheduler=scheduler, decode_workers=decode_workers, threads=threads,
                           strict=strict, retry_failed=retry_failed, shard_size=shard_size,
                           batch_seconds=batch_seconds, device=device, progress=not no_progress)
    decoding = {"language": language, "task": task, "num_beams": num_beams, "max_new_tokens": max_new_tokens}
    result = run_transcribe(config, asr, decoding, on_report=lambda report: click.echo(format_report(report), err=True))
    document = {**_summary_dict(result.extraction), "text_source": result.source, "wer": result.wer,
                "wer_note": result.note} if as_json else None
    _finish_run(result.extraction, document, format_transcribe_summary(result))


def _summary_dict(summary) -> dict:
    return {"corpus": summary.corpus, "seconds": summary.seconds, "stopped": summary.stopped,
            "corpus_report": summary.report.to_dict() if summary.report else None,
            "features": [{"name": f.name, "config_hash": f.config_hash, "directory": f.directory, "done": f.done,
                          "cached": f.cached, "failed_before": f.failed_before, "failed": f.failed}
                         for f in summary.features]}


def _workers(ctx, param, value: str) -> Optional[int]:
    """--loader-workers (a click callback): a count >= 0, or auto (None)."""
    if value == "auto":
        return None
    if not value.isdigit():
        raise click.BadParameter(f"{value!r}: give a number of processes (0, 1, 2, ...) or auto")
    return int(value)


SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?)i?b?", re.IGNORECASE)


def _bytes(ctx, param, value: Optional[str]) -> Optional[int]:
    """--preload-budget (a click callback): 512MiB, 2GiB, 0 (always stream) -> bytes; None: the default."""
    if value is None:
        return None
    match = SIZE.fullmatch(value.strip())
    if not match:
        raise click.BadParameter(f"{value!r}: give a size such as 512MiB, 2GiB or 0 (always stream)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " kmg".index(unit.lower() or " "))


def _key_values(settings: tuple[str, ...], flag: str) -> dict:
    out = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise MerError(f"{flag} {setting!r}: write KEY=VALUE")
        out[key] = value
    return out


@cli.command()
@click.option("--model", required=True, help="A fusion model or baseline (see `mer list models`).")
@click.option("--dataset", "corpus", required=True, help="The corpus name in the cache (demo, meld, iemocap, ...).")
@click.option("--cache", required=True, type=click.Path(path_type=Path))
@click.option("--protocol", help="meld, iemocap-loso, iemocap-10fold, iemocap7-10fold, mosei, manifest, demo "
              "(default: the corpus's own).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a model config field (lr, batch_size, max_epochs, audio_feature, ...). Repeatable.")
@click.option("--ablation", "ablations", multiple=True, metavar="NAME[=VALUE][+...]",
              help="An ablated run: switches of the model joined by '+' (no_awa+window=30; full: none). Repeated: "
              "one run each, into --out/<ablation>.")
@click.option("--ablation-grid", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file of ablated runs, one per line as --ablation takes it, each into --out/<ablation>.")
@click.option("--protocol-option", "protocol_options", multiple=True, metavar="KEY=VALUE")
@click.option("--folds", help="Comma-separated fold names to run (default: all).")
@click.option("--workers", default=1, show_default=True, help="Folds in parallel on a local dask cluster.")
@click.option("--scheduler", metavar="ADDR", help="Train the folds on an existing dask.distributed scheduler "
              "(tcp://host:8786); its workers must read --cache at the same path.")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default: a new "
              "runs/<model>-<corpus>-<protocol>-<time> each time). The same command with the same --out resumes the "
              "run there (an interrupted run prints that command); a different run there is refused.")
@click.option("--overwrite", is_flag=True, help="Remove a different run found in --out, then train this one.")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True,
              help="auto: CUDA when present (decided on each worker with --scheduler).")
@click.option("--class-weights", is_flag=True, help="Inverse-frequency class weights in the cross-entropy.")
@click.option("--loader-workers", default="auto", show_default=True, callback=_workers,
              help="DataLoader worker processes per fold; auto: 1 when a fold streams its inputs from the cache "
                   "(too large to preload) in batches of 4 MiB or more, else 0.")
@click.option("--preload-budget", callback=_bytes, metavar="SIZE",
              help="Memory the folds running at once may use to preload their features (512MiB, 4GiB; 0: always "
                   "stream from the cache; default PRELOAD_BYTES, docs/cache.md).")
def fuse(model, corpus, cache, protocol, settings, ablations, ablation_grid, protocol_options, folds, workers,
         scheduler, out, overwrite, seed, device, class_weights, loader_workers, preload_budget) -> None:
    """Train and evaluate a fusion model on every fold of a protocol, from the cache alone."""
    from mer.fuse.run import FuseConfig, ablation_switches, read_ablation_grid, run_ablation_grid, run_fuse
    from mer.fuse.trainer import TrainerConfig

    config = FuseConfig(model=model, corpus=corpus, cache=cache, protocol=protocol,
                        protocol_options=_key_values(protocol_options, "--protocol-option"),
                        settings=_key_values(settings, "--set"), out=out, overwrite=overwrite, workers=workers,
                        scheduler=scheduler, folds=folds.split(",") if folds else None,
                        trainer=TrainerConfig(device=device, seed=seed, class_weights=class_weights),
                        loader_workers=loader_workers)
    if preload_budget is not None:
        config = replace(config, preload_budget=preload_budget)
    specs = list(ablations) + (read_ablation_grid(ablation_grid, config) if ablation_grid else [])
    if ablation_grid or len(specs) > 1:
        run_ablation_grid(config, specs, _fuse_log)
    else:
        run_fuse(replace(config, ablations=ablation_switches(specs[0]) if specs else []), _fuse_log)


def _finetune_setting_options(command):
    """--lr, --epochs, ... with FinetuneSettings' defaults."""
    from mer.finetune import SETTING_FLAGS, FinetuneSettings

    defaults = FinetuneSettings()
    for flag, name in reversed(SETTING_FLAGS.items()):
        kind = int if name in ("max_epochs", "patience", "batch_size", "max_length") else float
        command = click.option(flag, name, type=kind, default=getattr(defaults, name), show_default=True)(command)
    return command


@cli.command()
@click.option("--encoder", required=True, help="A text extractor (minilm-l6, roberta-base, bert-base-uncased, ...) "
              "or hf-text:PATH_OR_ID.")
@click.option("--dataset", required=True, help="Corpus reader: " + ", ".join(_corpus_names()))
@click.option("--root", type=click.Path(path_type=Path), help="Corpus folder (or manifest file); demo needs none.")
@click.option("--cache", required=True, type=click.Path(path_type=Path), help="Feature cache the folds' features "
              "go into.")
@click.option("--protocol", help="The folds (default: the corpus's own); `mer fuse` must use the same.")
@click.option("--protocol-option", "protocol_options", multiple=True, metavar="KEY=VALUE")
@click.option("--set", "settings", multiple=True, metavar="TARGET.KEY=VALUE", help="corpus.KEY for the reader, "
              "ENCODER.KEY for the encoder (granularity, context_turns, layers, pool, ...). Repeatable.")
@click.option("--folds", help="Comma-separated fold names (default: all).")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default runs/finetune-<encoder>-"
              "<corpus>-<protocol>); the same command resumes it.")
@_finetune_setting_options
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads (default: torch's own).")
@click.option("--no-progress", is_flag=True, help="No extraction progress bar.")
def finetune(encoder, dataset, root, cache, protocol, protocol_options, settings, folds, out, seed, device, threads,
             no_progress, **hyper) -> None:
    """Fine-tune a text encoder with a classification head on each fold's training split, then extract each
    fold's features with its own checkpoint (read them with --set text_feature=finetuned:RUN_DIR)."""
    from mer.finetune import FinetuneConfig, FinetuneSettings, finetune as run_finetune, format_finetune_summary

    corpus_options, encoder_options = parse_settings(settings, [encoder])
    config = FinetuneConfig(encoder=encoder, dataset=dataset, cache=cache, root=root, protocol=protocol,
                            protocol_options=_key_values(protocol_options, "--protocol-option"),
                            corpus_options=corpus_options, encoder_options=encoder_options.get(encoder, {}),
                            folds=folds.split(",") if folds else None, out=out,
                            settings=replace(FinetuneSettings(), **hyper), seed=seed, device=device,
                            threads=threads, progress=not no_progress)
    summary = run_finetune(config, _fuse_log)
    click.echo(format_finetune_summary(summary))
    sys.exit(max(f.extraction.exit_code for f in summary.folds))


def _fuse_log(line: str) -> None:
    """Per-fold progress ("[Ses01] epoch ...") to stderr; the run's header and results to stdout."""
    click.echo(line, err=line.startswith("["))


@cli.command()
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="A `mer fuse` run directory.")
@click.option("--audio", type=click.Path(path_type=Path), help="An audio file (any format, rate, channels).")
@click.option("--text", default="", help="The transcript (without it, a run trained on ASR text transcribes "
              "--audio with its own ASR).")
@click.option("--asr", metavar="MODEL", help="Transcribe --audio with this Whisper (whisper-large-v3, "
              "hf-whisper:PATH_OR_ID) instead of giving --text.")
@click.option("--no-text", is_flag=True, help="Predict from an empty transcript although the model reads text.")
@click.option("--context", multiple=True, metavar="TEXT", help="A previous turn of the dialogue, for text "
              "features that read context (context_turns); repeat, oldest first.")
@click.option("--fold", help="Use one fold's checkpoint (default: average over all complete folds).")
@click.option("--json", "as_json", is_flag=True)
def predict(run_dir, audio, text, asr, no_text, context, fold, as_json) -> None:
    """Class probabilities for new audio + text, with the run's own feature extractors."""
    from mer.predict import predict as run_predict

    result = run_predict(run_dir, audio, text, fold, no_text=no_text, warn=lambda line: click.echo(line, err=True),
                         asr=asr, context=context)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    for label, value in sorted(result.items(), key=lambda kv: -kv[1]):
        click.echo(f"{label:<12} {value:.4f}")


@cli.group()
def cache() -> None:
    """Inspect, verify and clean a feature cache."""


@cache.command("ls")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def cache_ls(root, as_json) -> None:
    """List corpora and features in a cache."""
    from mer.cache.reader import FeatureCache

    fc = FeatureCache(existing_cache_folder(root))
    rows = [{"corpus": f.corpus, "feature": f.name, "config_hash": f.config_hash, "utterances": f.num_utterances,
             "failures": f.num_failures, "shards": f.num_shards, "dims": list(f.spec.row_shape),
             "granularity": f.spec.granularity, "bytes": _size(f.directory),
             "ignored_spec_keys": list(f.spec.ignored_keys)}
            for corpus in fc.corpora() for f in fc.features(corpus)]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        click.echo(f"{root}: empty cache")
    for r in rows:
        click.echo(f"{r['corpus']:<16} {r['feature']:<28} {r['config_hash']}  {r['utterances']:>7} utt  "
                   f"{r['failures']:>4} failed  dims {r['dims']}  {r['bytes'] / 1e6:.1f} MB"
                   + (f"  (spec keys from a newer mer ignored: {', '.join(r['ignored_spec_keys'])})"
                      if r["ignored_spec_keys"] else ""))


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).glob("shard-*.h5"))


@cache.command("info")
@click.argument("root", type=click.Path(path_type=Path))
@click.argument("corpus", required=False)
@click.argument("feature", required=False)
@click.option("--json", "as_json", is_flag=True)
def cache_info(root, corpus, feature, as_json) -> None:
    """Describe features: spec, dims, layers, model, counts and failures."""
    from mer.cache.reader import FeatureCache

    fc = FeatureCache(existing_cache_folder(root))
    corpora = [fc.corpus(corpus)] if corpus else fc.corpora()
    infos = [fc.find(c, feature) for c in corpora] if feature else [f for c in corpora for f in fc.features(c)]
    out = [_info_dict(fc, info) for info in infos]
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    for item in out:
        spec = item["spec"]
        click.echo(f"{item['corpus']}/{spec['name']}@{spec['config_hash']}  ({item['directory']})")
        click.echo(f"  {spec['modality']} {spec['granularity']}  dims {item['dims']}  dtype {spec['dtype']}  "
                   f"frame rate {spec['frame_rate']}  layers {item['layers']}")
        click.echo(f"  model {spec['model_id']} revision {spec['model_revision']}  config {json.dumps(spec['config'])}")
        click.echo(f"  {item['utterances']} utterances in {item['shards']} shards; {len(item['failures'])} failed")
        for utt_id, reason in list(item["failures"].items())[:10]:
            click.echo(f"    failed {utt_id}: {reason}")
        if item["ignored_spec_keys"]:
            click.echo(f"  spec keys from a newer mer ignored: {', '.join(item['ignored_spec_keys'])}")


def _info_dict(fc, info) -> dict:
    from mer.cache.manifest import read_manifest

    manifest = read_manifest(info.directory)
    corpus_size = len(fc.utterances(info.corpus)) if (Path(fc.root) / info.corpus / "utterances.jsonl").is_file() else None
    spec = info.spec
    return {"corpus": info.corpus, "directory": str(info.directory), "spec": spec.to_dict(),
            "dims": list(spec.row_shape), "layers": spec.config.get("layers"),
            "utterances": info.num_utterances, "corpus_utterances": corpus_size, "shards": info.num_shards,
            "bytes": _size(info.directory), "package_version": manifest["package_version"],
            "failures": manifest["failures"], "ignored_spec_keys": list(spec.ignored_keys)}


@cache.command("verify")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--corpus")
@click.option("--feature")
@click.option("--json", "as_json", is_flag=True)
@click.option("--strict", is_flag=True, help="Count recorded extraction failures as problems too.")
@click.option("--repair", is_flag=True, help="Drop damaged shards and records, rebuild the manifest; the next "
              "`mer extract` recomputes what was dropped.")
def cache_verify(root, corpus, feature, as_json, strict, repair) -> None:
    """Recompute checksums; check records, links, coverage, dims, NaN/Inf, duplicates. Exit 1 on any problem."""
    from mer.cache.verify import verify_cache

    reports = verify_cache(existing_cache_folder(root), corpus, feature, repair)
    bad = [r for r in reports if not r.ok or (strict and r.failed)]
    if as_json:
        click.echo(json.dumps({"ok": not bad, "features": [{**r.__dict__, "ok": r.ok} for r in reports]}, indent=1))
    else:
        for r in reports:
            state = "ok" if r.ok else "PROBLEMS"
            click.echo(f"{r.corpus}/{r.feature}@{r.config_hash}: {state}  stored {r.stored}, failed {r.failed}, "
                       f"missing {r.missing}, dims {r.dims}")
            for line in [*r.problems, *r.dropped, *r.notes]:
                click.echo(f"  {line}")
    sys.exit(1 if bad else 0)


@cache.command("rm")
@click.argument("root", type=click.Path(path_type=Path))
@click.argument("corpus")
@click.argument("feature", required=False)
@click.option("--yes", is_flag=True, help="Do not ask.")
def cache_rm(root, corpus, feature, yes) -> None:
    """Remove one feature (FEATURE or FEATURE@HASH) of a corpus, or the whole corpus: only what `cache ls`
    lists, and never while a running `mer extract` holds a claim in it."""
    from mer.cache.remove import removal_target, remove

    target = removal_target(root, corpus, feature)
    if not yes and not _confirmed(f"remove {target}?"):
        click.echo("nothing removed")
        return
    click.echo(f"removed {remove(root, corpus, feature)}")


def _confirmed(question: str) -> bool:
    """A yes/no answer; no answer at all (stdin closed, not a terminal) is a one-line error naming --yes."""
    try:
        return click.confirm(question)
    except click.exceptions.Abort:
        raise MerError(f"{question} got no answer (stdin is not a terminal); pass --yes to remove without "
                       "asking") from None


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--metric", help="The test metric to compare on (default: the first run's protocol's headline: ua, "
              "weighted_f1 for MELD / EmoryNLP, macro_f1 for MSP-Podcast, mae for regression).")
@click.option("--allow-mismatch", is_flag=True, help="Compare runs on different protocols, folds or label sets "
              "anyway; paired tests use only the folds that test the same utterances in both runs.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              help="Folder for compare.png (default: the current one).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare(run_dirs, metric, allow_mismatch, out, as_json) -> None:
    """Finished runs side by side: their test metrics, paired tests against the first, compare.png."""
    from mer.fuse.compare import compare_runs, format_comparison

    document = compare_runs(list(run_dirs), metric, allow_mismatch, out)
    click.echo(json.dumps(document, indent=1) if as_json else format_comparison(document))


@cli.group("list")
def list_group() -> None:
    """List what is registered."""


@list_group.command("extractors")
def list_extractors() -> None:
    from mer.extract.base import EXTRACTORS
    import mer.extract  # noqa: F401

    for name in EXTRACTORS.names():
        click.echo(name)


@list_group.command("models")
@click.option("--cache", type=click.Path(path_type=Path), help="Show whether each model's features are in this cache.")
@click.option("--dataset", "corpus", help="The corpus to look in (with --cache).")
def list_models(cache, corpus) -> None:
    """Each model, its default features (paper's, and the demo's) with the granularity it reads, and
    whether they are cached at that granularity."""
    from mer.fuse.models import MODELS, make_config, model_names
    from mer.fuse.run import model_features

    if cache:
        existing_cache_folder(cache)
    if bool(cache) != bool(corpus):
        given, missing = ("--cache", "--dataset CORPUS") if cache else ("--dataset", "--cache DIR")
        raise click.UsageError(f"{given} needs {missing} too: the corpus is looked up in the cache")
    for name in model_names():
        config, demo_config = MODELS.get(name).config_class(), make_config(name, "demo")
        paper = _pair(model_features(name, config, "paper", {}), config)
        demo = _pair(model_features(name, demo_config, "demo", {}), demo_config)
        line = f"{name:<12} paper: {paper:<72} demo: {demo}"
        if cache and corpus:
            line += "  " + _cached(cache, corpus, name)
        click.echo(line)


def _pair(features: dict, config) -> str:
    from mer.fuse.models.base import accepted_granularities

    return " + ".join(f"{role}={name} ({'/'.join(accepted_granularities(config, role)) or 'any'})"
                      for role, name in features.items() if name)


def _cached(cache: Path, corpus: str, name: str) -> str:
    """"cached", or what `mer fuse` would say is missing or of another granularity."""
    from mer.cache.reader import FeatureCache
    from mer.fuse.models import make_config
    from mer.fuse.run import corpus_family, model_features, resolve_features

    config = make_config(name, corpus_family(corpus))
    try:
        resolve_features(FeatureCache(cache), corpus, name, config, model_features(name, config, corpus, {}))
    except MerError as problem:
        return f"not ready: {str(problem).split(': ', 1)[-1]}"
    return "cached"


@list_group.command("corpora")
def list_corpora() -> None:
    """Each corpus reader with the protocol `mer fuse` uses when none is named (docs/corpora.md)."""
    from mer.data.protocols import PROTOCOLS, default_protocol

    for name in _corpus_names():
        protocol = PROTOCOLS.get(default_protocol(name))
        kind = "speaker-independent" if protocol.speaker_independent else "speaker-dependent or unchecked"
        click.echo(f"{name:<12} default protocol: {protocol.name:<13} ({kind}) {protocol.description}")


if __name__ == "__main__":
    main()
