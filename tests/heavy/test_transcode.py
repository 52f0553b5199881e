"""Transcode: a generated audio file becomes valid HLS renditions with a master playlist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sluice.errors import BusinessError
from tests.heavy.conftest import Aws, make_audio, media_duration
from worker.heavy import transcode
from worker.heavy.common import Limits

SECONDS = 13.0


@pytest.fixture(scope="module")
def hls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("transcode")
    src = make_audio(work / "sermon.mp3", SECONDS)
    out = work / "hls"
    return out, transcode.transcode_file(src, out)


def test_master_playlist_lists_two_aac_renditions_with_measured_bandwidth(hls) -> None:
    # Given a 13 s MP3 transcoded
    out, _ = hls
    # When the master playlist is read
    lines = (out / "master.m3u8").read_text().splitlines()
    # Then it is an HLS master naming each rendition with its bandwidth and codec
    assert lines[0] == "#EXTM3U"
    infs = [line for line in lines if line.startswith("#EXT-X-STREAM-INF:")]
    uris = [line for line in lines if line and not line.startswith("#")]
    assert uris == ["aac_64k/index.m3u8", "aac_128k/index.m3u8"]
    bandwidths = [int(re.search(r"BANDWIDTH=(\d+)", i)[1]) for i in infs]  # type: ignore[index]
    assert all('CODECS="mp4a.40.2"' in i for i in infs)
    assert 50_000 < bandwidths[0] < 100_000 < bandwidths[1] < 180_000


def test_each_rendition_is_a_complete_vod_playlist_whose_segments_exist(hls) -> None:
    # Given the transcoded tree
    out, result = hls
    for r in result["renditions"]:
        # When its media playlist is parsed
        text = (out / r["playlist"]).read_text()
        segments = [line for line in text.splitlines() if line and not line.startswith("#")]
        # Then it is VOD, closed, and every segment it names was written and is not empty
        assert "#EXT-X-PLAYLIST-TYPE:VOD" in text and text.rstrip().endswith("#EXT-X-ENDLIST")
        target = int(re.search(r"#EXT-X-TARGETDURATION:(\d+)", text)[1])  # type: ignore[index]
        assert all(float(d) <= target + 0.5 for d in re.findall(r"#EXTINF:([\d.]+)", text))
        assert len(segments) == r["segments"] == 3
        assert all((out / r["name"] / s).stat().st_size > 1000 for s in segments)


def test_playlist_durations_match_the_source_and_what_ffmpeg_decodes(hls) -> None:
    # Given the transcoded tree
    out, result = hls
    for r in result["renditions"]:
        # When the playlist's EXTINF durations are summed and the playlist is decoded whole
        decoded = media_duration(out / r["playlist"])
        # Then both match the 13 s source (AAC priming adds at most a frame or two)
        assert r["duration_s"] == pytest.approx(SECONDS, abs=0.1)
        assert decoded == pytest.approx(SECONDS, abs=0.1)
    assert result["source_duration_s"] == pytest.approx(SECONDS, abs=0.1)


def test_a_task_uploads_the_tree_under_the_output_prefix_with_hls_content_types(
    aws: Aws, tmp_path: Path
) -> None:
    # Given a WAV upload in the media bucket
    src = make_audio(tmp_path / "a.wav", 4, codec="pcm_s16le")
    aws.s3.upload_file(str(src), aws.bucket, "uploads/a.wav")
    # When the transcode task runs
    result = transcode.run(
        {
            "source": {"bucket": aws.bucket, "key": "uploads/a.wav"},
            "output": {"bucket": aws.bucket, "prefix": "hls/job-1"},
        },
        aws.context(),
    )
    # Then the master and both renditions are under hls/job-1/ with HLS content types
    assert result["master"] == f"s3://{aws.bucket}/hls/job-1/master.m3u8"
    keys = aws.keys("hls/job-1/")
    assert "hls/job-1/master.m3u8" in keys
    assert {k.split("/")[2] for k in keys if k.endswith(".ts")} == {"aac_64k", "aac_128k"}
    assert len(keys) == result["files"] == 1 + 2 * (1 + 1)
    head = aws.s3.head_object(Bucket=aws.bucket, Key="hls/job-1/aac_64k/index.m3u8")
    assert head["ContentType"] == "application/vnd.apple.mpegurl"
    assert result["duration_s"] == pytest.approx(4, abs=0.1)


def test_corrupt_audio_is_a_business_error(aws: Aws) -> None:
    # Given an object that claims to be MP3 but holds no audio
    aws.s3.put_object(Bucket=aws.bucket, Key="uploads/bad.mp3", Body=b"ID3" + b"\x00garbage" * 500)
    # When it is transcoded, Then the task fails for good with reason corrupt_audio
    with pytest.raises(BusinessError) as err:
        transcode.run(
            {
                "source": {"bucket": aws.bucket, "key": "uploads/bad.mp3"},
                "output": {"bucket": aws.bucket, "prefix": "hls/bad/"},
            },
            aws.context(),
        )
    assert err.value.code == "corrupt_audio"
    assert aws.keys("hls/bad/") == []


def test_an_oversize_object_is_refused_before_download(aws: Aws, tmp_path: Path) -> None:
    # Given an upload larger than the worker's limit
    aws.s3.put_object(Bucket=aws.bucket, Key="uploads/big.wav", Body=b"\0" * 50_000)
    # When it is transcoded with a 10 kB limit, Then it fails with reason oversize
    with pytest.raises(BusinessError) as err:
        transcode.run(
            {
                "source": {"bucket": aws.bucket, "key": "uploads/big.wav"},
                "output": {"bucket": aws.bucket, "prefix": "hls/big/"},
            },
            aws.context(max_audio_bytes=10_000),
        )
    assert err.value.code == "oversize"


def test_audio_longer_than_the_limit_is_refused(tmp_path: Path) -> None:
    # Given 6 s of audio and a 5 s limit
    src = make_audio(tmp_path / "long.mp3", 6)
    # When it is transcoded, Then it fails with reason too_long and writes nothing
    with pytest.raises(BusinessError) as err:
        transcode.transcode_file(src, tmp_path / "out", limits=Limits(max_audio_seconds=5))
    assert err.value.code == "too_long"
    assert not (tmp_path / "out").exists()


def test_a_missing_source_object_is_a_business_error(aws: Aws) -> None:
    # Given no object at the key, When transcoded, Then reason missing_audio
    with pytest.raises(BusinessError) as err:
        transcode.run(
            {
                "source": {"bucket": aws.bucket, "key": "uploads/nope.mp3"},
                "output": {"bucket": aws.bucket, "prefix": "hls/nope/"},
            },
            aws.context(),
        )
    assert err.value.code == "missing_audio"
