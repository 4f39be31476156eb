"""Decoding details that the corpus tests do not reach: segment cuts and odd streams."""

import av
import numpy as np
import pytest

import mer.data.audio as audio_module
from mer.data.audio import _FrameCollector, load_audio, resample
from mer.errors import AudioDecodeError


def write_aac(path, wave: np.ndarray, rate: int) -> None:
    """(channels, samples) float32 -> AAC in mp4."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate, layout="stereo" if wave.shape[0] == 2 else "mono")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave, dtype=np.float32), format="fltp",
                                           layout=stream.layout.name)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_mp4_segment_is_the_slice_of_the_whole_file(tmp_path):
    # tones only: AAC decoders fill noise-like bands with random noise (PNS), which differs between
    # a decode from the start and one after a seek
    t = np.arange(48000 * 4) / 48000
    wave = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t)])
    write_aac(tmp_path / "a.mp4", wave.astype(np.float32), 48000)
    whole = load_audio(tmp_path / "a.mp4")
    assert whole.dtype == np.float32 and abs(len(whole) - 4 * 16000) < 2048  # AAC pads to whole frames
    for start in (0.5, 1.5, 2.5):  # after 1 s the decoder seeks
        cut = load_audio(tmp_path / "a.mp4", start, start + 1.0)
        assert len(cut) == 16000
        first = int(start * 16000)
        # the edges differ: the resampler sees the cut, not its neighbours
        np.testing.assert_allclose(cut[100:-100], whole[first + 100:first + 16000 - 100], atol=5e-5)


def test_a_stream_whose_format_changes_mid_file_is_still_down_mixed():
    blocks = []
    collector = _FrameCollector(blocks.append)
    stereo = av.AudioFrame.from_ndarray(np.full((2, 1024), 0.5, dtype=np.float32), format="fltp", layout="stereo")
    packed = av.AudioFrame.from_ndarray(np.full((1, 512), 8192, dtype=np.int16), format="s16", layout="mono")
    for frame in (stereo, stereo, packed, stereo):
        frame.sample_rate = 48000
        collector.add(frame)
    collector.flush()
    mono = np.concatenate(blocks)
    assert mono.shape == (1024 * 3 + 512,) and collector.count == len(mono)
    np.testing.assert_allclose(mono[:2048], 0.5)
    np.testing.assert_allclose(mono[2048:2560], 8192 / 32768)
    np.testing.assert_allclose(mono[2560:], 0.5)


def test_frames_are_handed_on_in_blocks_of_about_block_values(monkeypatch):
    monkeypatch.setattr(audio_module, "BLOCK_VALUES", 4096)  # 2048 stereo samples per block
    blocks = []
    collector = _FrameCollector(blocks.append)
    for _ in range(5):
        frame = av.AudioFrame.from_ndarray(np.full((2, 1024), 0.25, dtype=np.float32), format="fltp",
                                           layout="stereo")
        frame.sample_rate = 48000
        collector.add(frame)
    collector.flush()
    assert [len(b) for b in blocks] == [2048, 2048, 1024]


def test_no_frames_give_no_blocks():
    blocks = []
    _FrameCollector(blocks.append).flush()
    assert blocks == []


def test_a_truncated_stream_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "empty.mp4"
    with av.open(str(path), "w") as container:  # an audio stream without a single packet
        stream = container.add_stream("aac", rate=48000, layout="mono")
        for packet in stream.encode(None):
            container.mux(packet)
    with pytest.raises(AudioDecodeError, match=f"{path}: .*"):
        load_audio(path)


# ---- streaming decode: same samples as decoding whole, memory of the output only ----------------
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import soundfile as sf  # noqa: E402


STREAM_TOLERANCE = 1e-6  # measured: 0.0 (streaming and one-shot soxr give the same samples)


def tones(seconds: float, rate: int, channels: int) -> np.ndarray:
    """(samples, channels): a different tone and a little noise per channel."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(channels).standard_normal((len(t), channels))
    return (0.2 * np.sin(2 * np.pi * np.outer(t, 110 * (1 + np.arange(channels)))) + 0.01 * noise).astype(np.float32)


def decoded_whole(path, start, end) -> np.ndarray:
    """The pre-streaming result: the whole segment read, down-mixed, then resampled in one shot."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    first = int(round((start or 0.0) * rate))
    last = len(data) if end is None else min(len(data), int(round(end * rate)))
    return resample(data[first:last].mean(axis=1), rate, 16000)


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
@pytest.mark.parametrize("rate,channels", [(48000, 1), (96000, 8), (16000, 2)])
@pytest.mark.parametrize("start,end", [(None, None), (0.37, None), (None, 2.61), (1.23, 4.56)])
def test_sndfile_decoding_in_blocks_equals_decoding_whole(tmp_path, monkeypatch, suffix, rate, channels, start, end):
    monkeypatch.setattr(audio_module, "BLOCK_VALUES", 12_345)  # dozens of blocks in a 5 s file
    path = tmp_path / f"a{suffix}"
    sf.write(str(path), tones(5.0, rate, channels), rate, subtype="PCM_24")
    streamed, whole = load_audio(path, start, end), decoded_whole(path, start, end)
    assert streamed.dtype == np.float32 and streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=STREAM_TOLERANCE)


def av_decoded_whole(path) -> tuple[np.ndarray, int]:
    """Every frame of the first audio stream, down-mixed after the whole file is decoded."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        channels = stream.codec_context.channels
        # planar float planes, read by hand: PyAV 18's to_ndarray crashes on 8-channel planar frames
        frames = [np.stack([np.frombuffer(p, np.float32, count=frame.samples) for p in frame.planes[:channels]])
                  for frame in container.decode(stream)]
        return np.concatenate(frames, axis=1).mean(axis=0), stream.codec_context.sample_rate


@pytest.mark.parametrize("rate,channels", [(48000, 1), (48000, 2), (96000, 8)])
@pytest.mark.parametrize("start,end", [(None, None), (0.37, 2.61)])  # starts before 1 s: no seek
def test_av_decoding_in_blocks_equals_decoding_whole(tmp_path, monkeypatch, rate, channels, start, end):
    monkeypatch.setattr(audio_module, "BLOCK_VALUES", 12_345)
    path = tmp_path / "a.mp4"
    write_av(path, tones(4.0, rate, channels).T, rate)
    whole, file_rate = av_decoded_whole(path)
    assert file_rate == rate
    first = int(round((start or 0.0) * rate))
    last = None if end is None else int(round(end * rate))
    streamed = load_audio(path, start, end)
    expected = resample(whole[first:last], rate, 16000)
    assert streamed.shape == expected.shape
    np.testing.assert_allclose(streamed, expected, rtol=0, atol=STREAM_TOLERANCE)


def write_av(path, wave: np.ndarray, rate: int) -> None:
    """(channels, samples) float32 -> AAC in mp4, any channel count FFmpeg has a layout for."""
    layout = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}[wave.shape[0]]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate, layout=layout)
        # packed: PyAV 18's from_ndarray fails on 8-channel planar arrays
        packed = np.ascontiguousarray(wave.T, dtype=np.float32).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(packed, format="flt", layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


_PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys
    from mer.data.audio import load_audio

    load_audio(sys.argv[1], 0.0, 0.1)  # libraries loaded before measuring
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    wave = load_audio(sys.argv[1])
    print(wave.size, wave.nbytes, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
""")


def write_long_wav(path, seconds: int, rate: int, channels: int) -> None:
    """Written 10 s at a time, so that this process never holds the file."""
    t = np.arange(10 * rate) / rate
    block = (6000 * np.sin(2 * np.pi * np.outer(t, 110 * (1 + np.arange(channels))))).astype(np.int16)
    with sf.SoundFile(str(path), "w", rate, channels, subtype="PCM_16") as f:
        for _ in range(seconds // 10):
            f.write(block)


def test_a_ten_minute_eight_channel_96khz_file_decodes_in_memory_of_its_16khz_output(tmp_path):
    # decoded whole, the input alone is 600 s * 96000 * 8 * 4 bytes = 1.8 GB of float32
    path = tmp_path / "long.wav"
    write_long_wav(path, 600, 96000, 8)
    try:
        done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path)], capture_output=True, text=True,
                              timeout=300)
    finally:
        path.unlink()
    assert done.returncode == 0, done.stderr
    samples, output_bytes, grown = map(int, done.stdout.split())
    assert samples == 600 * 16000
    assert grown < 3 * output_bytes + 50e6, f"peak RSS grew {grown / 1e6:.0f} MB for {output_bytes / 1e6:.0f} MB out"
