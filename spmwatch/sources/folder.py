"""Watch Igor's save folder(s) and hand over each new `.ibw` frame exactly once, when complete.

watchdog events make pick-up prompt, but they are only a hint: a periodic rescan catches
whatever they miss (network shares, overflowed event queues, a folder that was away), and the
`SeenFiles` registry of (path, size, mtime, content digest) keeps every frame to one
delivery, across restarts too when it persists to a state file: a new mtime with the same
bytes (`touch`, a sync tool, a backup restore) is not a new frame.

A frame enters the registry only when the consumer acknowledges it (`FrameFile.done`, after
its verdict is published); until then it is "in flight" and the rescan leaves it alone. So a
crash between hand-over and verdict costs at most one repeat after the restart, never the frame
(at least once; the responder acts at most once per scan and kind, so a repeat is harmless).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import queue
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from stat import S_ISDIR
from typing import IO

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from spmwatch import statelock
from spmwatch.config import set_aside
from spmwatch.ibw import IbwError, NoImageChannelsError, check_complete, read_scan, warm_up_reader
from spmwatch.model import Scan
from spmwatch.protocol import safe_scan_id
from spmwatch.sources import Counters, FrameFile, Sink, SourceThread
from spmwatch.sources.readiness import Broken, Readiness, Ready, Stamp, stamp_of

log = structlog.get_logger("spmwatch.sources")

# Entries kept in the registry: every addition rewrites the state file, so this keeps each save
# small (~2.5 MB). The oldest beyond it are forgotten, their folder's watermark raised instead.
MAX_SEEN = 20_000
# 1: [size, mtime_ns] per file, read as entries without a digest. 2 may also hold "dropped"
# (the watermarks): older daemons ignore it, so it needed no new version.
_STATE_VERSION = 2
# A folder not there at start is likelier mistyped or not yet mounted than gone.
MISSING_AT_START = "no such folder (mistyped, not created yet, or not mounted?)"


def is_ibw(path: str | Path) -> bool:
    return str(path).lower().endswith(".ibw")


def read_frame(path: Path) -> Scan:
    """Read a saved frame under a scan id that is safe on the wire and in file names."""
    return read_scan(path, scan_id=safe_scan_id(path.stem))


def content_digest(path: Path) -> str:
    """A digest of the wave's own bytes (the headers and every section they declare): what
    tells a new frame from the same one re-stamped, or rewritten with only the bytes Asylum
    appends after the wave changed (~64 KB; a copy whose tail came later was scored twice).
    A file that is not a wave is digested whole."""
    try:
        remaining: int | None = check_complete(path).implied
    except IbwError:
        remaining = None
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while remaining is None or remaining > 0:
            chunk = handle.read(1 << 20 if remaining is None else min(1 << 20, remaining))
            if not chunk:
                break
            digest.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return digest.hexdigest()


class SeenFiles:
    """Which versions of which files were already handed over; optionally kept in a JSON file.

    The state file is rewritten atomically (temporary file + os.replace) after each addition,
    so a crash leaves either the old or the new registry, never half of one. A state file that
    cannot be read leaves the registry empty and `load_error` set, for the owner to report.
    """

    def __init__(self, state_file: str | Path | None = None, claim: bool = False) -> None:
        self.state_file = Path(state_file) if state_file is not None else None
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[int, int, str | None]] = {}  # size, mtime_ns, digest
        self._folders: set[str] = set()  # folders watched before: files new there are new
        # per folder, the newest mtime_ns among the entries dropped past MAX_SEEN
        self._dropped: dict[str, int] = {}
        self.load_error: str | None = None
        self._claimed: IO[str] | None = None
        if claim:  # before reading: an unreadable file is set aside, not another's to move
            self._claim()
        if self.state_file is not None and self.state_file.exists():
            self._load(self.state_file)

    def _load(self, path: Path) -> None:
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(state, dict) or state.get("v") not in (1, _STATE_VERSION):
                raise ValueError(f"not a version 1 or {_STATE_VERSION} spmwatch state file")
            self._seen = {
                str(p): (int(e[0]), int(e[1]), str(e[2]) if len(e) > 2 and e[2] else None)
                for p, e in state["files"].items()
            }
            self._folders = {str(p) for p in state.get("folders", [])}
            self._dropped = {str(f): int(m) for f, m in state.get("dropped", {}).items()}
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            aside = set_aside(path)
            kept = f"; kept as {aside}" if aside else ""
            self.load_error = f"state file {path} ignored: {exc}{kept}"

    def _claim(self) -> None:
        """Keep the state file to this daemon until it exits (statelock.claim): two daemons
        sharing one would re-publish files after a restart."""
        if self.state_file is not None:
            self._claimed = statelock.claim(self.state_file)

    def save(self) -> None:
        """Write the registry now (OSError when it cannot be): the daemon's start-up check."""
        if self.state_file is not None:
            with self._lock:
                self._save(self.state_file)

    def __contains__(self, item: tuple[Path, Stamp]) -> bool:
        """Recorded at this stamp, or forgotten past MAX_SEEN: no entry, and not newer than
        the newest file dropped from its folder (old news, not to be scored again)."""
        path, stamp = item
        with self._lock:
            entry = self._seen.get(str(path))
            mark = self._dropped.get(str(path.parent)) if entry is None else None
        if entry is not None:
            return entry[:2] == stamp
        return mark is not None and stamp[1] <= mark

    def recorded(self, path: Path, stamp: Stamp) -> bool:
        """Whether `path` has an entry at `stamp` (the watermarks aside)."""
        with self._lock:
            entry = self._seen.get(str(path))
        return entry is not None and entry[:2] == stamp

    def digest_of(self, path: Path) -> str | None:
        """The digest recorded for `path`'s last handled version, if any."""
        with self._lock:
            entry = self._seen.get(str(path))
        return entry[2] if entry is not None else None

    def paths_with(self, digest: str) -> dict[Path, Stamp]:
        """The files whose last handled version had these bytes, with that version's stamp: a
        rename's or copy's origin."""
        with self._lock:
            return {Path(p): entry[:2] for p, entry in self._seen.items() if entry[2] == digest}

    def __len__(self) -> int:
        return len(self._seen)

    def watched_before(self, folder: Path) -> bool:
        """Whether an earlier run with this state file watched the files of `folder` (a
        resolved path): as a watched folder, or under one watched recursively ("<path>/**")."""
        with self._lock:
            return str(folder) in self._folders or any(
                str(above / "**") in self._folders for above in (folder, *folder.parents)
            )

    def adopt_folder(self, configured: Path, resolved: Path) -> None:
        """Older state files named a watched folder as configured (through a link, say), not
        resolved: the folder stays known under its resolved path."""
        with self._lock:
            for old, new in ((configured, resolved), (configured / "**", resolved / "**")):
                if str(old) in self._folders:
                    self._folders.add(str(new))

    def add_folder(self, folder: str) -> None:
        """Remember `folder` as watched: after a restart, files not seen in it were written
        while the daemon was down."""
        with self._lock:
            if folder in self._folders:
                return
            self._folders.add(folder)
            if self.state_file is not None:
                self._save(self.state_file)

    def add(self, path: Path, stamp: Stamp, digest: str | None = None) -> None:
        self.add_many([(path, stamp, digest)])

    def add_many(self, entries: Iterable[tuple[Path, Stamp, str | None]]) -> None:
        """Record versions (path, stamp, digest), then save the registry once: a folder's
        history of thousands of files, saved file by file, rewrote the state file as often."""
        with self._lock:
            for path, stamp, digest in entries:
                self._seen.pop(str(path), None)  # re-insert: the dict's order is the age order
                self._seen[str(path)] = (*stamp, digest)
            while len(self._seen) > MAX_SEEN:
                self._drop_oldest()
            if self.state_file is not None:
                self._save(self.state_file)

    def move(self, old: Path, new: Path, stamp: Stamp, digest: str) -> None:
        """Record a renamed file under its new path, its old entry forgotten."""
        with self._lock:
            self._seen.pop(str(old), None)
        self.add(new, stamp, digest)

    def _drop_oldest(self) -> None:
        """Forget the oldest entry; its file is most likely still there, so its folder's
        watermark keeps it (and anything as old there) seen instead of scored again."""
        path = next(iter(self._seen))
        mtime = self._seen.pop(path)[1]
        folder = str(Path(path).parent)
        self._dropped[folder] = max(mtime, self._dropped.get(folder, mtime))

    def _save(self, path: Path) -> None:
        body = json.dumps(
            {
                "v": _STATE_VERSION,
                "files": self._seen,
                "folders": sorted(self._folders),
                "dropped": self._dropped,
            }
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _digest_at(path: Path, stamp: Stamp) -> str | None:
    """`path`'s digest while it is still the version at `stamp`; None when it was rewritten
    meanwhile (the bytes read would be another version's) or cannot be read."""
    try:
        digest = content_digest(path)
        return digest if stamp_of(path.stat()) == stamp else None
    except OSError:
        return None


def _identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of a folder, None when it is not there (or not a folder)."""
    try:
        stat = folder.stat()
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino) if S_ISDIR(stat.st_mode) else None


# an acknowledgement: the frame's path, stamp and digest, and whether it was handled
_Ack = tuple[Path, Stamp, str | None, bool]


class _Hint(FileSystemEventHandler):
    """Turns watchdog events into "look at this path soon"; runs in the observer's thread."""

    def __init__(self, watcher: FolderWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            path = os.fsdecode(raw)
            if path and is_ibw(path):
                self._watcher.hint(Path(path))


class _Folder:
    """One watched folder: whether it is there, and its observer while it is."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.present: bool | None = None  # None until first checked
        self.identity: tuple[int, int] | None = None  # (st_dev, st_ino) the observer watches
        self.observer: Observer | None = None


class FolderWatcher(SourceThread):
    """Delivers a `FrameFile` for every new or modified complete `.ibw` under `folders`.

    Files already there at start that `seen` does not know are delivered when their folder
    was watched before (a persistent `seen` remembers the folders: exactly the frames written
    while the daemon was down; a folder's own files count as watched in either `recursive`
    mode, its sub-folders' only if it was watched recursively) or with `existing=True`; in a
    folder watched for the first time they are otherwise recorded as seen without delivery, so
    a first start does not score a folder's history. A wave handled before, under a new stamp
    or a new name (renamed, copied), is recorded, not delivered again.
    Broken files become one `SourceError` each; a vanished folder is reported and waited for.
    """

    name = "folder"

    def __init__(
        self,
        folders: str | Path | Iterable[str | Path],
        sink: Sink,
        *,
        recursive: bool = False,
        existing: bool = False,
        settle: float = 0.5,
        rescan_interval: float = 2.0,
        give_up: float = 30.0,
        seen: SeenFiles | None = None,
    ) -> None:
        super().__init__(sink)
        paths = [folders] if isinstance(folders, str | Path) else list(folders)
        self._folders = [_Folder(Path(p).expanduser().absolute()) for p in paths]
        self.recursive = recursive
        self.existing = existing
        self.rescan_interval = rescan_interval
        self.seen = seen if seen is not None else SeenFiles()
        self._readiness = Readiness(read_frame, settle=settle, give_up=give_up)
        self._hints: set[Path] = set()
        self._hints_lock = threading.Lock()
        self._wake = threading.Event()
        self._tick = max(0.01, min(0.1, settle / 4))
        # Handed over, not yet acknowledged; and deferred by the consumer (paused) until
        # redeliver_deferred. Both are touched by the worker thread only: acknowledgements and
        # redelivery requests reach it, in order, through _acks (None = redeliver).
        self._in_flight: set[tuple[Path, Stamp]] = set()
        self._deferred: set[Path] = set()
        self._outside: set[Path] = set()  # links to files outside the folders, reported once
        self._undigested: deque[tuple[Path, Stamp]] = deque()  # history, digests to follow
        self._acks: queue.SimpleQueue[_Ack | None] = queue.SimpleQueue()
        self.counters = Counters(
            "frames",
            "broken",
            "not_image",
            "unchanged",
            "renamed",
            "rescans",
            "folder_gone",
            "folder_back",
            "pending",
            "busy_retries",
        )

    def hint(self, path: Path) -> None:
        """A file may have changed (from watchdog); the worker looks at it on its next tick."""
        with self._hints_lock:
            self._hints.add(path)
        self._wake.set()

    def redeliver_deferred(self) -> None:
        """The consumer takes frames again (resumed): the deferred ones are handed over anew."""
        self._acks.put(None)
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> bool:
        stopped = super().stop(timeout)
        if stopped:
            # Acknowledgements of frames the consumer finished after the worker ended. A state
            # file that cannot be saved now goes unreported (nobody would publish it); its
            # frames are handed over once more after the next start.
            self._settle_acks(report=False)
        return stopped

    def start(self) -> None:
        """Take the first look before returning, so "already there" means before start()."""
        if self.seen.load_error:
            self._emit_error(str(self.seen.state_file), self.seen.load_error)
        for folder in self._folders:
            self.seen.adopt_folder(folder.path, folder.path.resolve())
        self._supervise(first=True)
        super().start()

    def _run(self) -> None:
        warm_up_reader()  # in this thread, the one that reads the frames
        next_rescan = time.monotonic() + self.rescan_interval
        try:
            while not self._stop.is_set():
                self._wake.wait(self._tick)
                self._wake.clear()
                self._settle_acks()
                if time.monotonic() >= next_rescan:
                    self._supervise(first=False)
                    next_rescan = time.monotonic() + self.rescan_interval
                with self._hints_lock:
                    hints, self._hints = self._hints, set()
                for path in hints:
                    self._consider(path)
                for result in self._readiness.poll_all():
                    self._deliver(result)
                if self._undigested:
                    self._digest_history()
                self.counters.set("pending", len(self._readiness))
                self.counters.set("busy_retries", self._readiness.busy)
        finally:
            self._settle_acks()
            for folder in self._folders:
                self._stop_observer(folder)

    def _acknowledged(self, path: Path, stamp: Stamp, digest: str | None, handled: bool) -> None:
        """`FrameFile.acknowledge`, called from the consumer's thread: queued for the worker."""
        self._acks.put((path, stamp, digest, handled))
        self._wake.set()

    def _settle_acks(self, report: bool = True) -> None:
        while True:
            try:
                ack = self._acks.get_nowait()
            except queue.Empty:
                return
            if ack is None:
                self._redeliver()
                continue
            path, stamp, digest, handled = ack
            self._in_flight.discard((path, stamp))
            if handled:
                self._record(path, stamp, digest, report)
            else:
                self._deferred.add(path)

    def _redeliver(self) -> None:
        """Consider the deferred files anew; one deleted while paused is said gone, not
        dropped without a word."""
        deferred, self._deferred = self._deferred, set()
        for path in deferred:
            if path.exists():
                self._consider(path)
            else:
                log.info("file_gone", file=str(path), reason="deleted while deferred (paused)")

    def _record(self, path: Path, stamp: Stamp, digest: str | None, report: bool = True) -> None:
        self._saving(lambda: self.seen.add(path, stamp, digest), report)

    def _saving(self, change: Callable[[], None], report: bool = True) -> None:
        """Make a change to the registry, which keeps it in memory even when the state file
        cannot be saved; a failed save is reported (a source error naming the state file)."""
        try:
            change()
        except OSError as exc:
            if report:
                self._emit_error(str(self.seen.state_file), f"state file not saved: {exc}")

    def _supervise(self, first: bool) -> None:
        """Notice folders leaving and coming back; rescan every folder that is there."""
        self.counters.add("rescans")
        for folder in self._folders:
            identity = _identity(folder.path)
            present = identity is not None
            if present and folder.observer is not None and identity != folder.identity:
                self._stop_observer(folder)  # replaced between two looks: watch the new one
            if not present and folder.present is not False:  # missing at start counts too
                self._stop_observer(folder)
                self.counters.add("folder_gone")
                said = MISSING_AT_START if folder.present is None else "folder gone (unmounted?)"
                self._emit_error(str(folder.path), f"{said}; waiting for it")
            elif present and folder.present is False:
                self.counters.add("folder_back")
                log.info("folder_back", folder=str(folder.path))
            if present and folder.observer is None:
                self._start_observer(folder)
                folder.identity = identity
            if present:
                self._rescan(folder.path, first)
            folder.present = present

    def _rescan(self, root: Path, first: bool) -> None:
        """Consider every file in `root`, then remember it as watched. At start, files in a
        (sub-)folder watched for the first time are its past, not news (unless `existing`);
        _consider tells them from those written while the daemon was down."""
        history: list[tuple[Path, Stamp]] | None = [] if first and not self.existing else None
        for path in self._listing(root):
            self._consider(path, history)
        if history:
            self._keep_history(history)
            log.info(
                "folder_history",
                folder=str(root),
                files=len(history),
                note="already there at the first watch: taken as the folder's history, not "
                "scored ([watch] existing = true scores them)",
            )
        key = self._key(root.resolve())
        self._saving(lambda: self.seen.add_folder(key))

    def _keep_history(self, history: list[tuple[Path, Stamp]]) -> None:
        """Record a folder's history unscored, at once and without digests (reading every
        file would hold up the start); the digests follow a few per tick
        (_digest_history), so a history file re-stamped later is known as unchanged."""
        self._saving(lambda: self.seen.add_many((path, stamp, None) for path, stamp in history))
        self._undigested.extend(history)

    def _digest_history(self, budget: float = 0.02) -> None:
        """Digest history files for at most `budget` s (one file at least), recording those
        still at the stamp they were taken at."""
        done: list[tuple[Path, Stamp, str | None]] = []
        until = time.monotonic() + budget
        while self._undigested and (not done or time.monotonic() < until):
            path, stamp = self._undigested.popleft()
            try:
                if stamp_of(path.stat()) == stamp and self.seen.recorded(path, stamp):
                    done.append((path, stamp, content_digest(path)))
            except OSError:
                continue  # gone or unreadable: a later version is considered as new anyway
        if done:
            self._saving(lambda: self.seen.add_many(done))

    def _key(self, folder: Path) -> str:
        """How the state file names a watched folder (resolved: a link or another spelling of
        it is the same folder): with its sub-folders when recursive, so turning `recursive` on
        makes them a first watch (SeenFiles.watched_before)."""
        return str(folder / "**") if self.recursive else str(folder)

    def _listing(self, root: Path) -> Iterator[Path]:
        pattern = root.rglob("*") if self.recursive else root.glob("*")
        try:
            yield from (p for p in pattern if is_ibw(p.name) and p.is_file())
        except OSError:
            return  # the folder went away mid-listing; the next supervision notices

    def _consider(self, path: Path, history: list[tuple[Path, Stamp]] | None = None) -> None:
        """Make `path` a candidate unless this version of it was already handled; with
        `history` (a folder's first look), note it there instead, to be recorded unscored,
        unless an earlier run watched where it is (it was written while the daemon was down)."""
        try:
            resolved = path.resolve()
            stamp = stamp_of(resolved.stat())
        except OSError:
            return
        if not self._inside(resolved):
            if path not in self._outside:  # said once per link, not at every rescan
                self._outside.add(path)
                self.counters.reject("link to a file outside the watched folders")
                log.info("file_outside_ignored", file=str(path), target=str(resolved))
            return
        if self._handled(resolved, stamp):
            return
        if history is not None and not self.seen.watched_before(resolved.parent):
            history.append((resolved, stamp))
        elif resolved not in self._readiness:
            log.debug("file_seen", file=str(resolved), size=stamp[0])
            self._readiness.add(resolved)

    def _inside(self, path: Path) -> bool:
        """Only files really inside a watched folder (a symlink may point anywhere)."""
        for folder in self._folders:
            root = folder.path.resolve()
            if path.parent == root or (self.recursive and path.is_relative_to(root)):
                return True
        return False

    def _handled(self, path: Path, stamp: Stamp) -> bool:
        """Recorded, handed over and not yet acknowledged, or deferred by the consumer."""
        return (
            (path, stamp) in self.seen or (path, stamp) in self._in_flight or path in self._deferred
        )

    def _known_wave(self, result: Ready, digest: str | None) -> bool:
        """A wave already handled, under a new stamp or a new name: recorded under its path and
        stamp (a save error is reported), not handed over again. A frame is scored once per
        version of the wave itself, whatever the file is called."""
        if digest is None:
            return False
        if self.seen.digest_of(result.path) == digest:
            self._unchanged(result, digest, reason="same bytes, new timestamp")
            return True
        twins = self.seen.paths_with(digest)
        # a rename keeps size and mtime: a copy completed (or written) while the original
        # was renamed is not taken for the renamed file, whichever the watcher meets first
        gone = next((p for p, s in twins.items() if s == result.stamp and not p.exists()), None)
        if gone is not None:
            self.counters.add("renamed")
            log.info("file_renamed", file=str(result.path), was=str(gone))
            self._saving(lambda: self.seen.move(gone, result.path, result.stamp, digest))
        elif twins:  # said at info: someone copied a frame in, and may wonder why no verdict
            self._unchanged(result, digest, f"a copy of {next(iter(twins))}", level="info")
        return bool(twins)

    def _unchanged(self, result: Ready, digest: str, reason: str, level: str = "debug") -> None:
        self.counters.add("unchanged")
        getattr(log, level)("file_unchanged", file=str(result.path), reason=reason)
        self._record(result.path, result.stamp, digest)

    def _deliver(self, result: Ready | Broken) -> None:
        if self._handled(result.path, result.stamp):
            return  # the rescan and an event raced to the same version
        if isinstance(result, Broken):
            if result.kind == NoImageChannelsError.kind:
                # a force curve or another wave Igor saves beside the images: not a frame, and
                # nothing an operator must hear about
                self.counters.add("not_image")
                log.info("file_not_image", file=str(result.path), reason=result.reason)
            else:
                self.counters.add("broken")
                self.counters.reject(result.kind)
                self._emit_error(str(result.path), result.reason)
            self._record(result.path, result.stamp, _digest_at(result.path, result.stamp))
            return
        # digested before the hand-over, to know a renamed or copied wave: the digest, of this
        # very version, is recorded as is when the frame is acknowledged
        digest = _digest_at(result.path, result.stamp)
        if self._known_wave(result, digest):
            return
        self._in_flight.add((result.path, result.stamp))
        acknowledge = functools.partial(self._acknowledged, result.path, result.stamp, digest)
        name, modified = self._inner_name(result.path), result.stamp[1] / 1e9
        self._sink(FrameFile(result.path, result.scan, name, modified, acknowledge))
        self.counters.add("frames")

    def _inner_name(self, path: Path) -> str:
        """`path` inside the watched folder holding it, with / separators."""
        for folder in self._folders:
            root = folder.path.resolve()
            if path.is_relative_to(root):
                return path.relative_to(root).as_posix()
        return path.name

    def _start_observer(self, folder: _Folder) -> None:
        observer = Observer()
        try:
            observer.schedule(_Hint(self), str(folder.path), recursive=self.recursive)
            observer.start()
        except OSError as exc:
            self._emit_error(str(folder.path), f"cannot watch for events ({exc}); rescanning only")
            return
        folder.observer = observer

    def _stop_observer(self, folder: _Folder) -> None:
        if folder.observer is not None:
            folder.observer.stop()
            folder.observer.join(timeout=2.0)
            folder.observer = None
