"""openSMILE extractors: dims, values equal to opensmile's own process_signal, LLD frame
counts, short clips, user config files (dims, hashing, SMILExtract-style rewiring, errors)."""

from __future__ import annotations

import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import opensmile
import pytest

from mer.data.utterance import Utterance
from mer.errors import MerError
from mer.extract.base import ExtractItem, build_extractor

SR = 16000
PACKAGE_CONFIGS = Path(opensmile.__file__).parent / "core" / "config"
IS09_FILES = ("IS09_emotion.conf", "IS09_emotion_core.lld.conf.inc", "IS09_emotion_core.func.conf.inc")
BUILTINS = {  # name: (FeatureSet, level, dim)
    "opensmile-compare16": ("ComParE_2016", "func", 6373),
    "opensmile-egemaps": ("eGeMAPSv02", "func", 88),
    "opensmile-emobase": ("emobase", "func", 988),
    "opensmile-compare16-lld": ("ComParE_2016", "lld", 65),
    "opensmile-egemaps-lld": ("eGeMAPSv02", "lld", 25),
    "opensmile-emobase-lld": ("emobase", "lld", 26),
}


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """A 150 Hz harmonic tone with vibrato plus noise: voiced, so pitch features are exercised."""
    t = np.arange(int(round(seconds * SR))) / SR
    phase = 2 * np.pi * (150 * t + 3 * np.sin(2 * np.pi * 4 * t))
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (0.2 * tone + 0.01 * noise).astype(np.float32)


def item(audio: np.ndarray, uid: str = "test/u0") -> ExtractItem:
    return ExtractItem(Utterance(id=uid, corpus="test"), audio=audio)


def opensmile_reference(feature_set, level: str, signal: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        smile = opensmile.Smile(feature_set=feature_set, feature_level=level)
        return smile.process_signal(signal, SR).to_numpy(dtype=np.float32)  # (rows, dim)


@pytest.fixture(scope="module")
def extractors():
    return {name: build_extractor(name) for name in BUILTINS}


@pytest.fixture
def is09_copy(tmp_path) -> Path:
    """The package's IS09 config copied out with its includes (is09-13/ beside shared/)."""
    folder = tmp_path / "is09-13"
    folder.mkdir()
    for name in IS09_FILES:
        shutil.copy(PACKAGE_CONFIGS / "is09-13" / name, folder / name)
    shutil.copytree(PACKAGE_CONFIGS / "shared", tmp_path / "shared")
    return folder / IS09_FILES[0]


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_specs(extractors, name):
    spec, (feature_set, level, dim) = extractors[name].spec, BUILTINS[name]
    assert spec.dim == dim and spec.dtype == "float32" and spec.modality == "audio"
    assert (spec.granularity, spec.frame_rate) == (("frame", 100.0) if level == "lld" else ("utterance", None))
    assert spec.config["feature_set"] == feature_set
    assert spec.config["opensmile_version"] == opensmile.__version__
    assert extractors[name].per_item_cpu


@pytest.mark.parametrize("name", BUILTINS)
def test_values_equal_opensmile_process_signal(extractors, name):
    feature_set, level, dim = BUILTINS[name]
    signal = speechlike(1.3)
    (got,) = extractors[name].extract([item(signal)])
    expected = opensmile_reference(opensmile.FeatureSet[feature_set], level, signal)
    expected = expected[0] if level == "func" else expected
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert got.shape[-1] == dim and np.isfinite(got).all()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", [n for n in BUILTINS if n.endswith("-lld")])
@pytest.mark.parametrize("seconds", [0.1, 0.73, 2.0])
def test_lld_frame_counts(extractors, name, seconds):
    signal = speechlike(seconds, seed=1)
    (got,) = extractors[name].extract([item(signal)])
    expected_rows = len(opensmile_reference(opensmile.FeatureSet[BUILTINS[name][0]], "lld", signal))
    # 100 frames/s, minus the frames whose (up to 60 ms) window would run past the end
    assert got.shape[0] == expected_rows and 0 <= len(signal) // 160 - got.shape[0] <= 6


def test_short_clips_are_zero_padded_to_min_seconds(extractors):
    clip = speechlike(0.03)  # shorter than ComParE's 60 ms pitch window: openSMILE alone gives NaN
    padded = np.pad(clip, (0, int(0.1 * SR) - len(clip)))
    for name in ("opensmile-compare16", "opensmile-egemaps-lld"):
        feature_set, level, _ = BUILTINS[name]
        (got,) = extractors[name].extract([item(clip)])
        expected = opensmile_reference(opensmile.FeatureSet[feature_set], level, padded)
        np.testing.assert_array_equal(got, expected[0] if level == "func" else expected)
        assert np.isfinite(got).all()
        assert extractors[name].spec.config["min_seconds"] == 0.1


def test_short_clip_without_padding_is_a_clear_error():
    extractor = build_extractor("opensmile-egemaps", min_seconds=0)
    with pytest.raises(MerError, match=r"test/short: .* gave no features for 0\.030 s"):
        extractor.extract([item(speechlike(0.03), uid="test/short")])
    assert extractor.spec.config_hash != build_extractor("opensmile-egemaps").spec.config_hash


def test_empty_audio_and_bad_options_are_clear_errors(extractors):
    with pytest.raises(MerError, match="test/empty: .*non-empty mono audio"):
        extractors["opensmile-egemaps"].extract([item(np.zeros(0, np.float32), uid="test/empty")])
    with pytest.raises(MerError, match="unknown option"):
        build_extractor("opensmile-egemaps", level="lld")  # the level is part of the name
    with pytest.raises(MerError, match="level must be"):
        build_extractor(f"opensmile-conf:{PACKAGE_CONFIGS / 'is09-13' / IS09_FILES[0]}", level="lld_de")


def test_full_scale_samples_do_not_wrap(extractors):
    """+1.0 * 32768 wraps to -32768 in int16 inside the package; we clip first."""
    signal = np.clip(speechlike(0.5) * 10, -1.0, 1.0)
    (got,) = extractors["opensmile-egemaps"].extract([item(signal)])
    clipped = np.clip(signal, -1.0, 32767 / 32768)
    np.testing.assert_array_equal(got, opensmile_reference(opensmile.FeatureSet.eGeMAPSv02, "func", clipped)[0])


def test_extractor_pickles_without_its_smile(extractors):
    extractor = extractors["opensmile-egemaps"]
    extractor.load()
    clone = pickle.loads(pickle.dumps(extractor))
    signal = speechlike(0.4)
    np.testing.assert_array_equal(clone.extract([item(signal)])[0], extractor.extract([item(signal)])[0])


def test_user_config_dims_and_values(is09_copy):
    signal = speechlike(1.1)
    for level, sink, dim in (("functionals", "func", 384), ("lld", "lld", 16)):
        extractor = build_extractor(f"opensmile-conf:{is09_copy}", level=level)
        assert extractor.spec.dim == dim
        assert extractor.spec.config["feature_level"] == level
        assert len(extractor.spec.config["config_sha256"]) == 64
        (got,) = extractor.extract([item(signal)])
        expected = opensmile_reference(opensmile.FeatureSet.IS09, sink, signal)
        np.testing.assert_array_equal(got, expected[0] if level == "functionals" else expected)
    assert extractor.spec.frame_rate == 100.0


def test_editing_the_config_or_an_include_changes_the_hash(is09_copy):
    def config_hash() -> str:
        return build_extractor(f"opensmile-conf:{is09_copy}").spec.config_hash

    original = config_hash()
    assert config_hash() == original
    with open(is09_copy, "a") as f:
        f.write("\n; edited\n")
    edited = config_hash()
    with open(is09_copy.parent / IS09_FILES[2], "a") as f:
        f.write("\n; edited include\n")
    assert len({original, edited, config_hash()}) == 3


def test_smilextract_style_config_is_rewired(is09_copy):
    """A config with its own cWaveSource and file sinks (as emo_large.conf) gives the same values."""
    text = is09_copy.read_text()
    wave_source = ("[componentInstances:cComponentManager]\ninstance[waveIn].type=cWaveSource\n\n"
                   "[waveIn:cWaveSource]\nwriter.dmLevel=wave\n"
                   "filename=\\cm[inputfile(I){test.wav}:name of input file]\nmonoMixdown=1\n\n")
    text = text.replace(r"\{\cm[source{?}:include external source]}", wave_source)
    text = text.replace(r"\{\cm[sink{?}:include external sink]}", r"\{../shared/standard_data_output.conf.inc}")
    standalone = is09_copy.with_name("IS09_standalone.conf")
    standalone.write_text(text)
    extractor = build_extractor(f"opensmile-conf:{standalone}")
    assert extractor.spec.config["rewired_to_external_io"] and extractor.spec.dim == 384
    assert standalone.read_text() == text  # the user's file is never changed
    signal = speechlike(0.8)
    np.testing.assert_array_equal(extractor.extract([item(signal)])[0],
                                  opensmile_reference(opensmile.FeatureSet.IS09, "func", signal)[0])


def test_missing_config_is_a_one_line_error(tmp_path):
    missing = tmp_path / "emo_large.conf"
    with pytest.raises(MerError) as error:
        build_extractor(f"opensmile-conf:{missing}")
    assert str(missing) in str(error.value) and "\n" not in str(error.value)
    (tmp_path / "main.conf").write_text("\\{missing_include.conf.inc}\n")
    with pytest.raises(MerError, match="missing_include.conf.inc: openSMILE config file not found"):
        build_extractor(f"opensmile-conf:{tmp_path / 'main.conf'}")


def test_broken_config_is_an_error_not_a_crash(is09_copy):
    """openSMILE aborts the process on a bad config; the first run is in a child process."""
    is09_copy.write_text(is09_copy.read_text().replace("writer.dmLevel = func", "writer.dmLevel = other"))
    with pytest.raises(MerError, match=rf"{is09_copy}: openSMILE cannot run this config at level 'func'"):
        build_extractor(f"opensmile-conf:{is09_copy}")


def test_min_seconds_from_the_command_line_is_a_number():
    assert build_extractor("opensmile-egemaps", min_seconds="0.2").spec.config_hash == \
        build_extractor("opensmile-egemaps", min_seconds=0.2).spec.config_hash
    with pytest.raises(MerError, match="min_seconds='short' must be a number"):
        build_extractor("opensmile-egemaps", min_seconds="short")
