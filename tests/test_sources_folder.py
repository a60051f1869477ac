"""The folder watcher with a real folder, real .ibw files written slowly, and watchdog."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog
from ibw_fixtures import make_scan, write_fixture
from sources_helpers import Collector, wait_for

from spmwatch.model import Scan
from spmwatch.sources import FrameFile, SourceError
from spmwatch.sources import folder as folder_module
from spmwatch.sources.folder import FolderWatcher, SeenFiles, read_frame
from spmwatch.sources.readiness import Broken, Readiness, Ready
from spmwatch.statelock import StateFileInUse


class TimedCollector(Collector):
    """Also notes when each frame arrived, to compare with when its writer finished."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: dict[str, list[float]] = {}

    def __call__(self, item: object) -> None:
        if isinstance(item, FrameFile):
            self.arrived.setdefault(item.path.name, []).append(time.monotonic())
            item.done()  # handled, as the daemon says once the verdict is out
        super().__call__(item)

    @property
    def frames(self) -> list[FrameFile]:
        return self.of(FrameFile)


def ibw_bytes(tmp_path: Path, scan: Scan) -> bytes:
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    return write_fixture(staging, scan).read_bytes()


def frame_bytes(tmp_path: Path, name: str) -> bytes:
    """A frame of its own, as every save is (wave name, noise): equal bytes are one wave."""
    scan = make_scan(lines=4, points=8, seed=zlib.crc32(name.encode()), scan_id=Path(name).stem)
    return ibw_bytes(tmp_path, scan)


def save(tmp_path: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(frame_bytes(tmp_path, path.name))


def run_once(folder: Path, state: Path, **options: object) -> None:
    """One start and stop of a watcher with `state`: its first look, and nothing delivered."""
    sink = TimedCollector()
    watcher = FolderWatcher(folder, sink, settle=0.05, seen=SeenFiles(state), **options)
    watcher.start()
    assert watcher.stop(5.0)


def write_in_chunks(path: Path, blob: bytes, rng: random.Random) -> None:
    """Write like a slow saver: 3-4 chunks, flushed, with pauses some longer than the settle."""
    cuts = sorted(rng.sample(range(1, len(blob)), rng.choice((2, 3))))
    with open(path, "wb") as handle:
        for start, stop in zip([0, *cuts], [*cuts, len(blob)], strict=True):
            handle.write(blob[start:stop])
            handle.flush()
            if stop < len(blob):
                time.sleep(rng.choice((0.0, 0.02, 0.1, 0.3)))


def assert_same_scan(got: Scan, want: Scan) -> None:
    assert list(got.channels) == list(want.channels)
    for name, data in want.channels.items():
        np.testing.assert_array_equal(got.channels[name], data)


@pytest.fixture
def watched(tmp_path: Path) -> Path:
    folder = tmp_path / "watched"
    folder.mkdir()
    return folder


@pytest.fixture
def stop_after() -> Iterator[list[FolderWatcher]]:
    started: list[FolderWatcher] = []
    yield started
    for watcher in started:
        assert watcher.stop(5.0)


def start(watcher: FolderWatcher, registry: list[FolderWatcher]) -> FolderWatcher:
    watcher.start()
    registry.append(watcher)
    return watcher


def linked(folder: Path, link: Path) -> Path:
    link.symlink_to(folder, target_is_directory=True)
    return link


def start_remembering(
    watched: Path, state: Path, sink: Collector, registry: list[FolderWatcher]
) -> FolderWatcher:
    """A started watcher of `watched` quick to settle and rescan, its registry in `state`."""
    watcher = FolderWatcher(watched, sink, settle=0.05, rescan_interval=0.1, seen=SeenFiles(state))
    return start(watcher, registry)


def test_200_slow_chunked_files_each_delivered_once_and_whole(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    scans = {
        f"frame_{i:03d}.ibw": make_scan(lines=4, points=16, seed=i, scan_id=f"frame_{i:03d}")
        for i in range(199)
    }
    scans["UPPER_CASE.IBW"] = make_scan(lines=4, points=16, seed=999, scan_id="UPPER_CASE")
    blobs = {name: ibw_bytes(tmp_path, scan) for name, scan in scans.items()}
    sink = TimedCollector()
    watcher = start(FolderWatcher(watched, sink, settle=0.2, rescan_interval=0.5), stop_after)

    finished: dict[str, float] = {}
    names = sorted(blobs)

    def writer(share: list[str], seed: int) -> None:
        rng = random.Random(seed)
        for name in share:
            write_in_chunks(watched / name, blobs[name], rng)
            finished[name] = time.monotonic()

    threads = [threading.Thread(target=writer, args=(names[k::10], k)) for k in range(10)]
    for thread in threads:
        thread.start()
    (watched / "notes.txt").write_text("not a frame")
    (watched / "frame_000.ibw.tmp").write_bytes(blobs["frame_000.ibw"])
    (watched / "subfolder").mkdir()
    (watched / "subfolder" / "nested.ibw").write_bytes(blobs["frame_001.ibw"])  # not recursive
    for thread in threads:
        thread.join()

    assert wait_for(lambda: len(sink.frames) >= 200, timeout=30)
    assert wait_for(lambda: watcher.counters.snapshot()["rescans"] >= 4, timeout=10)
    assert sorted(sink.arrived) == names
    assert all(len(times) == 1 for times in sink.arrived.values())
    for name, times in sink.arrived.items():
        assert times[0] >= finished[name], f"{name} delivered before its writer finished"
    for frame in sink.frames:
        assert_same_scan(frame.scan, scans[frame.path.name])
        assert frame.scan.scan_id == Path(frame.path.name).stem
    assert sink.errors == []
    counts = watcher.counters.snapshot()
    assert counts["frames"] == 200 and counts["broken"] == 0


def test_vanished_folder_is_reported_and_recovered(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    scans = [make_scan(lines=4, points=8, seed=i, scan_id=f"s{i}") for i in range(3)]
    sink = TimedCollector()
    watcher = start(FolderWatcher(watched, sink, settle=0.05, rescan_interval=0.1), stop_after)
    (watched / "s0.ibw").write_bytes(ibw_bytes(tmp_path, scans[0]))
    assert wait_for(lambda: len(sink.frames) == 1)

    shutil.rmtree(watched)
    assert wait_for(lambda: any("folder gone (unmounted?)" in e.reason for e in sink.errors))
    assert watcher.running
    watched.mkdir()
    for scan in scans[1:]:
        (watched / f"{scan.scan_id}.ibw").write_bytes(ibw_bytes(tmp_path, scan))
    assert wait_for(lambda: len(sink.frames) == 3)
    assert sorted(f.path.name for f in sink.frames) == ["s0.ibw", "s1.ibw", "s2.ibw"]
    counts = watcher.counters.snapshot()
    assert counts["folder_gone"] == 1 and counts["folder_back"] == 1
    # Events work again after the observer restart: a new file arrives well before a rescan.
    watcher.rescan_interval = 60.0
    assert wait_for(lambda: watcher.counters.snapshot()["rescans"] >= counts["rescans"] + 1)
    late = make_scan(lines=4, points=8, seed=3, scan_id="late")  # s0's bytes would be s0
    (watched / "late.ibw").write_bytes(ibw_bytes(tmp_path, late))
    assert wait_for(lambda: len(sink.frames) == 4, timeout=5)


def test_a_history_file_re_stamped_later_is_not_scored(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    # files taken as a folder's history were recorded without a digest: a touch then made
    # them look new, and they were scored
    state = tmp_path / "seen.json"
    old = watched / "old.ibw"
    old.write_bytes(ibw_bytes(tmp_path, make_scan(lines=4, points=8)))
    sink = TimedCollector()
    watcher = start_remembering(watched, state, sink, stop_after)
    assert wait_for(lambda: SeenFiles(state).digest_of(old.resolve()) is not None)
    later = time.time() + 5
    os.utime(old, (later, later))
    assert wait_for(lambda: watcher.counters.snapshot().get("unchanged", 0) == 1)
    assert sink.frames == []


def test_turning_recursive_on_scores_the_top_folders_news_and_keeps_the_sub_folders_past(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    # the recursive key ("<folder>/**") did not match the flat one: the whole folder became a
    # first watch, and the frames saved in it while the daemon was down were never scored
    state = tmp_path / "seen.json"
    save(tmp_path, watched / "sub" / "old.ibw")
    run_once(watched, state)
    save(tmp_path, watched / "meanwhile.ibw")  # while down, in the folder watched before
    save(tmp_path, watched / "sub" / "unwatched.ibw")  # in a sub-folder never watched
    sink = TimedCollector()
    deep = FolderWatcher(
        watched, sink, recursive=True, settle=0.05, rescan_interval=0.1, seen=SeenFiles(state)
    )
    start(deep, stop_after)
    assert wait_for(lambda: deep.counters.snapshot()["rescans"] >= 5)
    assert [f.name for f in sink.frames] == ["meanwhile.ibw"]  # sub/ is history
    save(tmp_path, watched / "sub" / "new.ibw")
    assert wait_for(lambda: [f.name for f in sink.frames] == ["meanwhile.ibw", "sub/new.ibw"])


def test_turning_recursive_off_and_on_again_loses_no_frame(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    state = tmp_path / "seen.json"
    save(tmp_path, watched / "sub" / "old.ibw")
    run_once(watched, state, recursive=True)
    save(tmp_path, watched / "top.ibw")
    save(tmp_path, watched / "sub" / "down.ibw")
    flat_sink = TimedCollector()
    flat = FolderWatcher(
        watched, flat_sink, settle=0.05, rescan_interval=0.1, seen=SeenFiles(state)
    )
    flat.start()
    assert wait_for(lambda: flat.counters.snapshot()["rescans"] >= 5)
    save(tmp_path, watched / "sub" / "while_flat.ibw")  # not watched now, but not history
    assert flat.stop(5.0)
    assert [f.name for f in flat_sink.frames] == ["top.ibw"]
    sink = TimedCollector()
    deep = FolderWatcher(
        watched, sink, recursive=True, settle=0.05, rescan_interval=0.1, seen=SeenFiles(state)
    )
    start(deep, stop_after)
    assert wait_for(lambda: deep.counters.snapshot()["rescans"] >= 5)
    assert sorted(f.name for f in sink.frames) == ["sub/down.ibw", "sub/while_flat.ibw"]


def test_a_folder_watched_through_a_link_is_the_same_folder(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    # the folder's key was its path as configured: watched by another name, a first watch
    state = tmp_path / "seen.json"
    link = linked(watched, tmp_path / "link")
    save(tmp_path, link / "old.ibw")
    run_once(link, state)
    written = json.loads(state.read_text())
    assert written["folders"] == [str(watched.resolve())]
    assert list(written["files"]) == [str(watched.resolve() / "old.ibw")]
    save(tmp_path, watched / "meanwhile.ibw")
    sink = TimedCollector()
    direct = start_remembering(watched, state, sink, stop_after)
    assert wait_for(lambda: direct.counters.snapshot()["rescans"] >= 5)
    assert [f.name for f in sink.frames] == ["meanwhile.ibw"]


def test_a_state_file_that_named_the_folder_by_its_link_still_knows_it(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    state = tmp_path / "seen.json"
    link = linked(watched, tmp_path / "link")
    state.write_text(json.dumps({"v": 2, "files": {}, "folders": [str(link)]}))
    save(tmp_path, watched / "meanwhile.ibw")
    sink = TimedCollector()
    start(FolderWatcher(link, sink, settle=0.05, seen=SeenFiles(state)), stop_after)
    assert wait_for(lambda: [f.name for f in sink.frames] == ["meanwhile.ibw"])


def watch_a_recorded_frame(
    tmp_path: Path, watched: Path, registry: list[FolderWatcher]
) -> tuple[FolderWatcher, TimedCollector, Path, Path]:
    """A remembering watcher that has scored and recorded Image0001.ibw: (watcher, its sink,
    its state file, the frame)."""
    state = tmp_path / "seen.json"
    sink = TimedCollector()
    watcher = start_remembering(watched, state, sink, registry)
    first = watched / "Image0001.ibw"
    save(tmp_path, first)
    assert wait_for(lambda: SeenFiles(state).digest_of(first.resolve()) is not None)
    return watcher, sink, state, first


def test_a_renamed_or_copied_frame_is_not_scored_again(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    """mv Image0001.ibw Image0001_keep.ibw gave a second verdict, and a second alert."""
    watcher, sink, state, first = watch_a_recorded_frame(tmp_path, watched, stop_after)
    kept = watched / "Image0001_keep.ibw"
    digest = SeenFiles(state).digest_of(first.resolve())
    with structlog.testing.capture_logs() as logs:
        first.rename(kept)
        assert wait_for(lambda: watcher.counters.snapshot()["renamed"] == 1)
    assert [(e["file"], e["was"]) for e in logs if e["event"] == "file_renamed"] == [
        (str(kept.resolve()), str(first.resolve()))
    ]
    assert wait_for(lambda: SeenFiles(state).digest_of(kept.resolve()) == digest)
    assert SeenFiles(state).digest_of(first.resolve()) is None  # the old name is forgotten
    shutil.copyfile(kept, watched / "copy.ibw")  # a copy beside the original: the same wave
    assert wait_for(lambda: watcher.counters.snapshot()["unchanged"] == 1)
    save(tmp_path, watched / "Image0002.ibw")
    assert wait_for(lambda: len(sink.frames) == 2)
    rescans = watcher.counters.snapshot()["rescans"]
    assert wait_for(lambda: watcher.counters.snapshot()["rescans"] >= rescans + 5)
    assert [f.name for f in sink.frames] == ["Image0001.ibw", "Image0002.ibw"]
    assert watcher.counters.snapshot()["renamed"] == 1


def test_a_copy_made_while_the_original_is_away_is_not_taken_for_its_rename(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    """A walkthrough completed a copy of a frame while renaming the frame: the log named the
    copy as the renamed file, and the registry followed it. A rename keeps size and mtime."""
    watcher, sink, _, first = watch_a_recorded_frame(tmp_path, watched, stop_after)
    away = tmp_path / "away.ibw"
    with structlog.testing.capture_logs() as logs:
        first.rename(away)  # out of the folder for now (a rename elsewhere on the disk)
        shutil.copyfile(away, watched / "copy.ibw")  # the same bytes, a new mtime
        assert wait_for(lambda: watcher.counters.snapshot()["unchanged"] == 1)
        copied = [e for e in logs if e["event"] == "file_unchanged"]
        assert [(e["log_level"], e["reason"]) for e in copied] == [
            ("info", f"a copy of {first.resolve()}")
        ]
        away.rename(watched / "Image0001_keep.ibw")
        assert wait_for(lambda: watcher.counters.snapshot()["renamed"] == 1)
    renamed = [(e["file"], e["was"]) for e in logs if e["event"] == "file_renamed"]
    assert renamed == [(str((watched / "Image0001_keep.ibw").resolve()), str(first.resolve()))]
    assert [f.name for f in sink.frames] == ["Image0001.ibw"]


def test_files_dropped_past_the_cap_are_not_scored_again(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the entries forgotten past MAX_SEEN were files still there: scored again at every rescan
    monkeypatch.setattr(folder_module, "MAX_SEEN", 3)
    state = tmp_path / "seen.json"
    long_ago = time.time() - 3600
    for i in range(6):
        save(tmp_path, watched / f"old{i}.ibw")
        os.utime(watched / f"old{i}.ibw", (long_ago + i, long_ago + i))
    sink = TimedCollector()
    watcher = start_remembering(watched, state, sink, stop_after)
    for name in ("new0.ibw", "new1.ibw"):
        save(tmp_path, watched / name)
    assert wait_for(lambda: len(sink.frames) == 2)
    assert wait_for(lambda: watcher.counters.snapshot()["rescans"] >= 10)
    assert sorted(f.name for f in sink.frames) == ["new0.ibw", "new1.ibw"]
    assert watcher.stop(5.0)
    written = json.loads(state.read_text())
    assert len(written["files"]) == 3 and list(written["dropped"]) == [str(watched.resolve())]
    again = TimedCollector()
    restarted = FolderWatcher(
        watched, again, settle=0.05, rescan_interval=0.1, seen=SeenFiles(state)
    )
    start(restarted, stop_after)
    save(tmp_path, watched / "new2.ibw")  # newer than anything forgotten: news
    assert wait_for(lambda: restarted.counters.snapshot()["rescans"] >= 10)
    assert [f.name for f in again.frames] == ["new2.ibw"]


def test_a_deferred_file_deleted_before_resume_is_said_gone(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    sink = Collector()
    watcher = FolderWatcher(watched, sink, settle=0.05, rescan_interval=0.1)
    start(watcher, stop_after)
    save(tmp_path, watched / "paused.ibw")
    assert wait_for(lambda: len(sink.of(FrameFile)) == 1)
    with structlog.testing.capture_logs() as logs:
        sink.of(FrameFile)[0].defer()
        (watched / "paused.ibw").unlink()
        watcher.redeliver_deferred()
        assert wait_for(lambda: any(e["event"] == "file_gone" for e in logs))
    gone = [e for e in logs if e["event"] == "file_gone"]
    assert [e["file"] for e in gone] == [str((watched / "paused.ibw").resolve())]
    assert gone[0]["log_level"] == "info"


def test_every_documented_counter_is_there_before_the_first_event(watched: Path) -> None:
    counts = FolderWatcher(watched, Collector()).counters.snapshot()
    documented = {"frames", "broken", "not_image", "unchanged", "renamed", "rescans"}
    assert documented | {"folder_gone", "folder_back", "pending", "busy_retries"} <= counts.keys()


def test_a_folder_missing_at_start_is_counted_gone_then_back(
    tmp_path: Path, stop_after: list[FolderWatcher]
) -> None:
    later = tmp_path / "later"
    sink = TimedCollector()
    watcher = start(FolderWatcher(later, sink, settle=0.05, rescan_interval=0.1), stop_after)
    assert [e.reason for e in sink.errors] == [
        "no such folder (mistyped, not created yet, or not mounted?); waiting for it"
    ]
    later.mkdir()
    (later / "a.ibw").write_bytes(ibw_bytes(tmp_path, make_scan(lines=4, points=8)))
    assert wait_for(lambda: len(sink.frames) == 1)
    counts = watcher.counters.snapshot()
    assert counts["folder_gone"] == 1 and counts["folder_back"] == 1


@pytest.mark.parametrize("existing", [False, True])
def test_restart_with_state_file_delivers_only_what_was_written_meanwhile(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher], existing: bool
) -> None:
    # with or without `existing`: the folder was watched before, so what is new in it was
    # written while the daemon was down
    state = tmp_path / "state" / "seen.json"
    blobs = {
        f"f{i}.ibw": ibw_bytes(tmp_path, make_scan(lines=4, points=8, seed=i, scan_id=f"f{i}"))
        for i in range(5)
    }
    first = TimedCollector()
    watcher = FolderWatcher(watched, first, settle=0.05, rescan_interval=0.1, seen=SeenFiles(state))
    watcher.start()
    for name in ("f0.ibw", "f1.ibw", "f2.ibw"):
        (watched / name).write_bytes(blobs[name])
    assert wait_for(lambda: len(first.frames) == 3)
    assert watcher.stop(5.0)

    for name in ("f3.ibw", "f4.ibw"):  # written while the daemon is down
        (watched / name).write_bytes(blobs[name])
    second = TimedCollector()
    restarted = FolderWatcher(
        watched, second, existing=existing, settle=0.05, rescan_interval=0.1, seen=SeenFiles(state)
    )
    start(restarted, stop_after)
    assert wait_for(lambda: len(second.frames) == 2)
    assert wait_for(lambda: restarted.counters.snapshot()["rescans"] >= 5)
    assert sorted(f.path.name for f in second.frames) == ["f3.ibw", "f4.ibw"]
    assert second.errors == []


def test_a_frame_is_recorded_only_when_acknowledged_and_a_deferred_one_comes_back(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    state = tmp_path / "seen.json"
    sink = Collector()  # keeps frames without acknowledging them
    watcher = start_remembering(watched, state, sink, stop_after)
    for seed, name in enumerate(("kept.ibw", "paused.ibw")):
        scan = make_scan(lines=4, points=8, seed=seed, scan_id=name[:-4])
        (watched / name).write_bytes(ibw_bytes(tmp_path, scan))
    assert wait_for(lambda: len(sink.of(FrameFile)) == 2)
    rescans = watcher.counters.snapshot()["rescans"]
    assert wait_for(lambda: watcher.counters.snapshot()["rescans"] >= rescans + 5)
    assert len(sink.of(FrameFile)) == 2  # in flight: the rescans do not hand them over again
    assert "kept.ibw" not in state.read_text()  # nothing is recorded before the verdict is out
    frames = {f.path.name: f for f in sink.of(FrameFile)}
    frames["kept.ibw"].done()
    frames["paused.ibw"].defer()
    assert wait_for(lambda: state.exists() and "kept.ibw" in state.read_text())
    rescans = watcher.counters.snapshot()["rescans"]
    assert wait_for(lambda: watcher.counters.snapshot()["rescans"] >= rescans + 5)
    assert len(sink.of(FrameFile)) == 2  # deferred: kept back until asked for
    watcher.redeliver_deferred()
    assert wait_for(lambda: len(sink.of(FrameFile)) == 3)
    again = sink.of(FrameFile)[2]
    assert again.path.name == "paused.ibw" and "paused.ibw" not in state.read_text()
    again.done()
    assert wait_for(lambda: "paused.ibw" in state.read_text())


def test_existing_files_only_when_asked(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    blob = ibw_bytes(tmp_path, make_scan(lines=4, points=8, scan_id="old"))
    (watched / "old.ibw").write_bytes(blob)
    ignoring, taking = TimedCollector(), TimedCollector()
    with structlog.testing.capture_logs() as logs:
        quiet = FolderWatcher(watched, ignoring, settle=0.05, rescan_interval=0.1)
        start(quiet, stop_after)
        start(FolderWatcher(watched, taking, existing=True, settle=0.05), stop_after)
        assert wait_for(lambda: len(taking.frames) == 1)
        assert wait_for(lambda: quiet.counters.snapshot()["rescans"] >= 5)
    assert ignoring.frames == []
    # said once, by the watcher that left the file alone: a silent start looked like a miss
    told = [e for e in logs if e["event"] == "folder_history"]
    assert [(e["files"], e["log_level"]) for e in told] == [(1, "info")]
    assert "existing = true" in told[0]["note"]
    # A later rewrite of the same file is a new version: delivered.
    (watched / "old.ibw").write_bytes(ibw_bytes(tmp_path, make_scan(lines=5, points=8)))
    assert wait_for(lambda: len(ignoring.frames) == 1)
    assert ignoring.frames[0].scan.n_lines == 5


def test_a_folder_watched_for_the_first_time_keeps_its_past_after_a_restart(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    # a folder added to a config with a state file: its files are history, not news
    state = tmp_path / "seen.json"
    added = tmp_path / "added"
    added.mkdir()
    (added / "old.ibw").write_bytes(ibw_bytes(tmp_path, make_scan(lines=4, points=8)))
    first = FolderWatcher(watched, TimedCollector(), settle=0.05, seen=SeenFiles(state))
    first.start()
    assert first.stop(5.0)
    assert SeenFiles(state).watched_before(watched.resolve())
    meanwhile = make_scan(lines=4, points=8, seed=1, scan_id="meanwhile")
    (watched / "meanwhile.ibw").write_bytes(ibw_bytes(tmp_path, meanwhile))
    sink = TimedCollector()
    again = FolderWatcher(
        [watched, added], sink, settle=0.05, rescan_interval=0.1, seen=SeenFiles(state)
    )
    start(again, stop_after)
    assert wait_for(lambda: len(sink.frames) == 1)
    assert wait_for(lambda: again.counters.snapshot()["rescans"] >= 5)
    assert [f.path.name for f in sink.frames] == ["meanwhile.ibw"]


def test_broken_and_stuck_files_are_reported_once(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    sink = TimedCollector()
    watcher = FolderWatcher(watched, sink, settle=0.05, rescan_interval=0.1, give_up=0.5)
    start(watcher, stop_after)
    (watched / "junk.ibw").write_bytes(b"this is not an igor wave at all" * 20)
    blob = ibw_bytes(tmp_path, make_scan(lines=4, points=8))
    (watched / "stuck.ibw").write_bytes(blob[: len(blob) // 2])
    assert wait_for(lambda: len(sink.errors) == 2, timeout=10)
    assert wait_for(lambda: watcher.counters.snapshot()["rescans"] >= 10)
    errors = {Path(e.subject).name: e.reason for e in sink.errors}
    assert len(sink.errors) == 2
    assert "not an Igor binary wave" in errors["junk.ibw"]
    assert "still incomplete" in errors["stuck.ibw"] and "truncated" in errors["stuck.ibw"]
    assert all(e.source == "folder" for e in sink.errors)
    # Finishing the stuck file makes it a new version, which is then delivered.
    (watched / "stuck.ibw").write_bytes(blob)
    assert wait_for(lambda: len(sink.frames) == 1)
    assert watcher.counters.snapshot()["rejected"] == {"not_ibw": 1, "incomplete": 1}


def test_readiness_retries_permission_errors(tmp_path: Path) -> None:
    path = write_fixture(tmp_path, make_scan(lines=4, points=8))
    refusals = [PermissionError("held open by Igor")] * 3

    def read(p: Path) -> Scan:
        if refusals:
            raise refusals.pop()
        return read_frame(p)

    readiness = Readiness(read, settle=0.0)
    results = [readiness.poll(path) for _ in range(4)]
    assert results[:3] == [None, None, None]
    assert isinstance(results[3], Ready) and readiness.busy == 3


def test_a_file_copied_in_slow_chunks_is_said_waiting_once(tmp_path: Path) -> None:
    """100 kB every 1.5 s logged file_incomplete_waiting at every chunk (walkthrough)."""
    whole = write_fixture(tmp_path, make_scan(lines=64, points=64)).read_bytes()
    path = tmp_path / "slow.ibw"
    now = [0.0]
    readiness = Readiness(read_frame, settle=1.0, clock=lambda: now[0])
    with structlog.testing.capture_logs() as logs:
        for size in range(4096, len(whole), 4096):
            path.write_bytes(whole[:size])
            os.utime(path, ns=(size, size))  # each chunk a new version, whatever the clock
            assert readiness.poll(path) is None  # changed: the settle time starts
            now[0] += 1.5
            assert readiness.poll(path) is None  # settled, still incomplete: waits
        path.write_bytes(whole)
        os.utime(path, ns=(len(whole), len(whole)))
        readiness.poll(path)
        now[0] += 1.5
        assert isinstance(readiness.poll(path), Ready)
    waits = [e for e in logs if e["event"] == "file_incomplete_waiting"]
    assert len(waits) == 1 and waits[0]["file"] == str(path)


def test_seen_files_survive_a_corrupt_state_file(tmp_path: Path) -> None:
    state = tmp_path / "seen.json"
    state.write_text("{half a json")
    seen = SeenFiles(state)
    assert seen.load_error is not None and str(state) in seen.load_error and len(seen) == 0
    seen.add(tmp_path / "a.ibw", (10, 20))
    again = SeenFiles(state)
    assert again.load_error is None and (tmp_path / "a.ibw", (10, 20)) in again
    assert (tmp_path / "a.ibw", (10, 21)) not in again
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".seen.json")]


def test_a_claimed_state_file_is_refused_to_another_process_until_it_dies(
    tmp_path: Path,
) -> None:
    """Two daemons given one state file each overwrote the other's record of handled files."""
    state = tmp_path / "state" / "seen.json"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_STATE_FILE, str(state)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "claimed"
        with pytest.raises(StateFileInUse, match=f"pid {holder.pid}"):
            SeenFiles(state, claim=True)
        SeenFiles(state).add(tmp_path / "a.ibw", (1, 2))  # unclaimed use (tools) is not locked
    finally:
        holder.kill()
        holder.wait()
    claimed = SeenFiles(state, claim=True)  # the lock died with its holder
    assert (tmp_path / "a.ibw", (1, 2)) in claimed


HOLD_STATE_FILE = """
import sys
from spmwatch.sources.folder import SeenFiles
seen = SeenFiles(sys.argv[1], claim=True)
print("claimed", flush=True)
sys.stdin.read()
"""


def test_broken_outcome_carries_the_kind(tmp_path: Path) -> None:
    path = tmp_path / "x.ibw"
    path.write_bytes(b"\x07\x00" + bytes(500))
    result = Readiness(read_frame, settle=0.0).poll(path)
    assert isinstance(result, Broken) and result.kind == "unsupported_version"
    assert isinstance(SourceError("folder", str(path), result.reason).reason, str)


def test_unsavable_state_file_is_reported_and_watching_goes_on(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    (tmp_path / "not_a_folder").write_text("a file where the state folder should be")
    seen = SeenFiles(tmp_path / "not_a_folder" / "seen.json")
    sink = TimedCollector()
    watcher = FolderWatcher(watched, sink, settle=0.05, rescan_interval=0.1, seen=seen)
    start(watcher, stop_after)
    (watched / "a.ibw").write_bytes(ibw_bytes(tmp_path, make_scan(lines=4, points=8)))
    # once when the folder is recorded at start, once for the frame; not at every rescan
    assert wait_for(lambda: len(sink.frames) == 1 and len(sink.errors) == 2)
    assert all("state file not saved" in e.reason for e in sink.errors)
    assert wait_for(lambda: watcher.counters.snapshot()["rescans"] >= 5)
    assert len(sink.frames) == 1 and len(sink.errors) == 2 and watcher.running


def test_a_new_mtime_on_the_same_bytes_is_not_a_new_frame(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    """touch, a sync tool or a restore re-stamps files: scored again, they repeated alerts."""
    state = tmp_path / "seen.json"
    sink = TimedCollector()
    watcher = start_remembering(watched, state, sink, stop_after)
    first = make_scan(lines=4, points=8, seed=1, scan_id="a")
    (watched / "a.ibw").write_bytes(ibw_bytes(tmp_path, first))
    assert wait_for(lambda: len(sink.frames) == 1)
    assert wait_for(lambda: state.exists() and "a.ibw" in state.read_text())
    later = time.time() + 5
    os.utime(watched / "a.ibw", (later, later))
    assert wait_for(lambda: watcher.counters.snapshot().get("unchanged", 0) == 1)
    assert len(sink.frames) == 1
    # the same size with other bytes is a new frame
    second = make_scan(lines=4, points=8, seed=2, scan_id="a")
    blob = ibw_bytes(tmp_path, second)
    assert len(blob) == (watched / "a.ibw").stat().st_size
    (watched / "a.ibw").write_bytes(blob)
    assert wait_for(lambda: len(sink.frames) == 2)
    assert_same_scan(sink.frames[1].scan, second)


def test_bytes_appended_after_the_wave_do_not_make_a_new_frame(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    """Asylum appends ~64 KB after the wave's sections. A copy whose tail came after a pause
    was whole as a wave, scored, then scored again when the tail landed: two verdicts."""
    sink = TimedCollector()
    watcher = FolderWatcher(watched, sink, settle=0.05, rescan_interval=0.1, seen=SeenFiles())
    start(watcher, stop_after)
    wave = ibw_bytes(tmp_path, make_scan(lines=4, points=8, seed=1, scan_id="t"))
    target = watched / "t.ibw"
    target.write_bytes(wave)
    assert wait_for(lambda: len(sink.frames) == 1)
    with target.open("ab") as handle:
        handle.write(b"\0" * 4096)  # what Asylum writes after the wave
    assert wait_for(lambda: watcher.counters.snapshot().get("unchanged", 0) == 1)
    assert len(sink.frames) == 1
    # the wave itself rewritten (another frame under the name) is scored
    target.write_bytes(ibw_bytes(tmp_path, make_scan(lines=4, points=8, seed=2, scan_id="t")))
    assert wait_for(lambda: len(sink.frames) == 2)


def test_a_link_to_a_file_outside_the_folder_is_not_read_and_is_counted(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    """A frame's path comes from the folder, so a link may point anywhere: never followed out,
    but no longer silently (counted once as rejected)."""
    outside = tmp_path / "elsewhere.ibw"
    outside.write_bytes(ibw_bytes(tmp_path, make_scan(lines=4, points=8, seed=1, scan_id="o")))
    sink = TimedCollector()
    watcher = FolderWatcher(watched, sink, settle=0.05, rescan_interval=0.05, seen=SeenFiles())
    start(watcher, stop_after)
    (watched / "link.ibw").symlink_to(outside)
    reason = "link to a file outside the watched folders"
    assert wait_for(lambda: watcher.counters.snapshot()["rejected"].get(reason) == 1)
    seen_at = watcher.counters.snapshot()["rescans"]
    assert wait_for(lambda: watcher.counters.snapshot()["rescans"] >= seen_at + 3)
    assert watcher.counters.snapshot()["rejected"][reason] == 1  # once, not at every rescan
    assert sink.frames == [] and sink.errors == []


def test_a_version_1_state_file_is_still_read(tmp_path: Path) -> None:
    state = tmp_path / "seen.json"
    state.write_text(json.dumps({"v": 1, "files": {str(tmp_path / "a.ibw"): [10, 20]}}))
    seen = SeenFiles(state)
    assert seen.load_error is None and (tmp_path / "a.ibw", (10, 20)) in seen
    assert seen.digest_of(tmp_path / "a.ibw") is None  # no digest: a re-stamp is re-read


def test_a_recursive_watch_names_frames_by_their_path_inside_the_folder(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    sink = TimedCollector()
    start(FolderWatcher(watched, sink, recursive=True, settle=0.05), stop_after)
    (watched / "day2").mkdir()
    for seed, where in enumerate((watched, watched / "day2")):  # numbering restarts there
        scan = make_scan(lines=4, points=8, seed=seed, scan_id="Image0001")
        (where / "Image0001.ibw").write_bytes(ibw_bytes(tmp_path, scan))
    assert wait_for(lambda: len(sink.frames) == 2)
    assert sorted(f.name for f in sink.frames) == ["Image0001.ibw", "day2/Image0001.ibw"]


def test_a_force_curve_beside_the_images_is_skipped_not_an_error(
    tmp_path: Path, watched: Path, stop_after: list[FolderWatcher]
) -> None:
    """Asylum folders hold force curves (1-D waves) beside the images: each was published as
    an error and counted broken."""
    from igorwriter import IgorWave5

    sink = TimedCollector()
    watcher = FolderWatcher(watched, sink, settle=0.05, rescan_interval=0.1)
    start(watcher, stop_after)
    IgorWave5(np.arange(64, dtype=np.float32), name="Force0001").save(str(watched / "f.ibw"))
    (watched / "a.ibw").write_bytes(ibw_bytes(tmp_path, make_scan(lines=4, points=8)))
    assert wait_for(lambda: len(sink.frames) == 1 and watcher.counters.snapshot()["not_image"])
    assert wait_for(lambda: watcher.counters.snapshot()["rescans"] >= 3)  # not reported again
    counts = watcher.counters.snapshot()
    assert (counts["not_image"], counts["broken"], sink.errors) == (1, 0, [])
