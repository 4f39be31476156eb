"""`finetuned:RUN_DIR` with option `fold=NAME`: the text encoder `mer finetune` fine-tuned on that fold's
training split, read from RUN_DIR/checkpoints/NAME, as the text extractor it was fine-tuned from (same
preset defaults, same dialogue context) with every other option of the text family (granularity, layers,
pool, combine, max_tokens).

The spec is named `finetuned:<RUN folder name>` and its config adds {"finetuned": {"run", "fold", "encoder"}},
so every fold's features are a config of their own (the weights' content hash keys them too); `mer fuse
--set text_feature=finetuned:RUN_DIR` picks, for each fold, the config of that fold's checkpoint.
`mer finetune` extracts them through the runner; it is rarely called by hand."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mer.extract.base import EXTRACTORS
from mer.extract.text import PRESETS, TextConfig, TextError, TextExtractor, parse_options
from mer.finetune_run import FINETUNED_PREFIX, FinetuneRun



@EXTRACTORS.register("finetuned")
def finetuned(arg: str = "", fold: str = "", **options) -> TextExtractor:
    if not arg:
        raise TextError("finetuned needs a run directory: finetuned:RUN_DIR (a `mer finetune --out` folder)")
    run = FinetuneRun.read(Path(arg))
    if not fold:
        raise TextError(f"{FINETUNED_PREFIX}{arg} needs fold=NAME, one of {', '.join(run.folds)}")
    trained = run.config["encoder_input"]  # what the encoder read while fine-tuned: extraction reads the same
    changed = sorted(key for key in options if key in trained and str(options[key]) != str(trained[key]))
    if changed:
        raise TextError(f"{FINETUNED_PREFIX}{arg}: {', '.join(changed)} was fixed by the fine-tuning "
                        f"({', '.join(f'{k}={trained[k]}' for k in changed)}); drop the option")
    encoder = run.config["encoder"]
    preset = PRESETS.get(encoder, TextConfig())  # hf-text:... has the family's defaults
    config = replace(parse_options(run.feature_name, preset, {**trained, **options}), model=str(run.checkpoint(fold)))
    extractor = TextExtractor(run.feature_name, config)
    origin = {"run": run.digest, "fold": fold, "encoder": encoder}
    extractor.spec = replace(extractor.spec, config={**extractor.spec.config, "finetuned": origin})
    return extractor
