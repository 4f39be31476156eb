"""Decoding details that the corpus tests do not reach: segment cuts and odd streams."""

import av
import numpy as np
import pytest

from mer.data.audio import _FrameCollector, load_audio


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
    collector = _FrameCollector()
    stereo = av.AudioFrame.from_ndarray(np.full((2, 1024), 0.5, dtype=np.float32), format="fltp", layout="stereo")
    packed = av.AudioFrame.from_ndarray(np.full((1, 512), 8192, dtype=np.int16), format="s16", layout="mono")
    for frame in (stereo, stereo, packed, stereo):
        frame.sample_rate = 48000
        collector.add(frame)
    mono = collector.mono()
    assert mono.shape == (1024 * 3 + 512,) and collector.count == len(mono)
    np.testing.assert_allclose(mono[:2048], 0.5)
    np.testing.assert_allclose(mono[2048:2560], 8192 / 32768)
    np.testing.assert_allclose(mono[2560:], 0.5)


def test_no_frames_gives_none():
    assert _FrameCollector().mono() is None
