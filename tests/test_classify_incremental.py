"""The incremental channel statistics equal the from-scratch ones bit for bit at every number
of lines (synthetic faults, NaN and flat lines, real scans), and the numpy evaluation of the
shipped model agrees with sklearn's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier

from spmwatch import ibw, synth
from spmwatch.classify import classifier as C
from spmwatch.classify import features as F
from spmwatch.classify.features import ChannelStatsAccumulator, channel_features
from spmwatch.scoring.scorer import score_scan


def assert_equal_at_every_prefix(channels: dict[str, np.ndarray], capacity: int = 8) -> None:
    """Push the frame line by line; after each line the accumulator's statistics must be
    exactly those of the stacked lines so far."""
    names = list(channels)
    lines, points = channels[names[0]].shape
    acc = ChannelStatsAccumulator(names, points, lines=capacity)
    for i in range(lines):
        acc.push({name: data[i] for name, data in channels.items()})
        expected = channel_features({name: data[: i + 1] for name, data in channels.items()})
        np.testing.assert_array_equal(acc.features(), expected, err_msg=f"after {i + 1} lines")
    for name, data in channels.items():
        np.testing.assert_array_equal(acc.channels()[name], data)


@pytest.mark.parametrize("kind", synth.FAULT_KINDS)
def test_every_synthetic_fault_matches_from_scratch_at_every_line(kind: str):
    scan, _ = synth.failing_scan(seed=11, lines=72, points=128, fault=kind, at=0.3)
    assert_equal_at_every_prefix(scan.channels)


def test_nan_inf_flat_zero_and_nearly_flat_lines_match(recwarn):
    scan = synth.clean_scan(5, 90, 96)
    channels = {name: data.astype(np.float32) for name, data in scan.channels.items()}
    for data in channels.values():
        data[0] = 0.0  # a zero line first: fewer than three good lines for a while
        data[12] = np.nan
        data[13, 7] = np.inf
        data[30:34] = data[30, 0]  # flat lines between good ones: steps across the gap
        data[50] = data[50, 0] + data[50] * 1e-9  # nearly flat, against the typical spread
        data[70:] = 0.0  # the scan stops producing data
    assert_equal_at_every_prefix(channels)


def test_a_line_that_turns_flat_as_the_frame_grows_matches():
    """'Flat' is relative to the frame's typical line spread: a quiet line counts as good
    while the early lines are quiet too and as flat once louder lines arrive."""
    rng = np.random.default_rng(3)
    quiet = rng.normal(size=(6, 64)) * 1e-3
    loud = rng.normal(size=(40, 64)) * 1e4
    data = np.vstack([quiet, loud])
    assert_equal_at_every_prefix({"Height": data, "Phase": data[:, ::-1].copy()})


def test_a_tall_frame_samples_the_entropy_lines_as_the_definition_does():
    """Beyond 2 x ENTROPY_LINES good lines the entropy samples every k-th good line (k grows
    with the frame), and a flat line shifts which lines are sampled."""
    scan, _ = synth.failing_scan(seed=4, lines=300, points=64, fault="dropout", at=0.5)
    channels = dict(list(scan.channels.items())[:2])
    for data in channels.values():
        data[140] = np.nan
    assert_equal_at_every_prefix(channels, capacity=64)


@pytest.mark.parametrize(
    "relpath",
    [
        "ofdspm/good/PTO_AC_0000.ibw",
        "ofdspm/good/WTV_Loc001_0001.ibw",
        "ofdspm/bad/Cs50MA50approx_0013.ibw",
        "ofdspm/bad/H_90Cs10MA_0000.ibw",
    ],
)
def test_real_scans_match_at_every_line(data_root: Path, relpath: str):
    scan = ibw.read_scan(data_root / relpath)
    channels = dict(scan.channels)
    if "good" in relpath:  # a real texture with dead lines in it
        first = next(iter(channels.values()))
        first[40:43] = 0.0
        first[100] = np.nan
    assert_equal_at_every_prefix(channels, capacity=256)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    lines=st.integers(1, 40),
    points=st.sampled_from([2, 3, 8, 65, 130]),
    dead=st.lists(st.sampled_from(["nan", "flat", "zero", "tiny"]), max_size=6),
)
def test_random_frames_with_dead_lines_match(seed, lines, points, dead):
    rng = np.random.default_rng(seed)
    data = np.cumsum(rng.normal(size=(lines, points)), axis=1).astype(np.float32)
    for kind in dead:
        i = rng.integers(0, lines)
        value = {"nan": np.nan, "flat": 2.5, "zero": 0.0, "tiny": None}[kind]
        data[i] = value if value is not None else 1 + rng.normal(size=points) * 1e-8
    with np.errstate(all="ignore"):
        assert_equal_at_every_prefix({"Height": data, "Amplitude": data * 2 + 1})


def test_no_lines_and_no_channels_give_what_channel_features_gives():
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        expected = channel_features({"Height": np.empty((0, 16))})
    np.testing.assert_array_equal(ChannelStatsAccumulator(["Height"], 16).features(), expected)
    empty = ChannelStatsAccumulator([], 16)
    empty.push({})
    assert empty.features() == channel_features({}) == [0.0] * len(F.CHANNEL_STATS)


def test_mixed_dtypes_are_stored_exactly_as_np_stack_would():
    rng = np.random.default_rng(8)
    rows = [rng.normal(size=32).astype(np.float32) for _ in range(5)]
    rows[3] = rng.normal(size=32)  # a float64 line widens the storage
    rows[4] = np.arange(32, dtype=np.int32)
    acc = ChannelStatsAccumulator(["Height"], 32, lines=2)
    for row in rows:
        acc.push({"Height": row})
    stacked = np.stack(rows)
    np.testing.assert_array_equal(acc.channels()["Height"], stacked)
    np.testing.assert_array_equal(acc.features(), channel_features({"Height": stacked}))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("run", [1, 5, 16, 40])
def test_blocks_pushed_at_once_match_and_early_lines_are_measured_alone(run: int, dtype):
    scan, _ = synth.failing_scan(seed=4, lines=60, points=64, fault="dropout", at=0.5)
    scan.channels = {name: data.astype(dtype) for name, data in scan.channels.items()}
    names = list(scan.channels)
    acc = ChannelStatsAccumulator(names, 64, lines=8)  # grows inside the blocks
    # the first line goes alone: a float64 one widens the storage, as in the daemon
    acc.push({name: scan.channels[name][0] for name in names})
    for start in range(1, 60, run):
        acc.push_block({name: data[start : start + run] for name, data in scan.channels.items()})
    for name in names:
        np.testing.assert_array_equal(acc.channels()[name], scan.channels[name])
        stored = acc.stored()[names.index(name)]
        np.testing.assert_array_equal(stored[3:9], scan.channels[name][3:9])
    for n in (0, 1, 9, 17, 33, 60, 99):  # features(n): the first n lines, however many are held
        first = {name: data[:n] for name, data in scan.channels.items()}
        with np.errstate(all="ignore"):
            expected = (
                channel_features(first) if n else ChannelStatsAccumulator(names, 64).features()
            )
        np.testing.assert_array_equal(acc.features(n), expected, err_msg=f"{n} lines")


def test_bad_lines_are_refused_by_name_and_not_added():
    acc = ChannelStatsAccumulator(["Height", "Phase"], 8)
    good = {"Height": np.ones(8, np.float32), "Phase": np.zeros(8, np.float32)}
    acc.push(good)
    with pytest.raises(ValueError, match=r"line 1: channel 'Phase' is missing"):
        acc.push({"Height": np.ones(8)})
    with pytest.raises(ValueError, match=r"line 1: channel 'Height' has shape \(7,\), expected"):
        acc.push({**good, "Height": np.ones(7)})
    with pytest.raises(ValueError, match=r"channel 'Phase' has dtype complex128, not real"):
        acc.push({**good, "Phase": np.ones(8, complex)})
    assert acc.n_lines == 1
    acc.push(good)
    assert acc.n_lines == 2 and acc.channels()["Phase"].shape == (2, 8)
    with pytest.raises(ValueError, match="at least 2 points"):
        ChannelStatsAccumulator(["Height"], 1)
    with pytest.raises(ValueError, match="repeat"):
        ChannelStatsAccumulator(["Height", "Height"], 8)


def test_kernels_reproduce_numpy_and_scipy():
    rng = np.random.default_rng(0)
    todo, sums = np.empty((128, 3), np.int64), np.empty(64)
    for n in (1, 7, 8, 9, 127, 128, 129, 250, 256, 512, 1000, 4099):
        x = rng.normal(size=n) * 10 ** rng.uniform(-6, 6) + rng.uniform(-1e3, 1e3)
        assert F._pairwise_sum(x, n, todo, sums) == np.add.reduce(x)
    for data in (
        rng.normal(size=(70, 50)),
        np.sort(rng.normal(size=3500)).reshape(70, 50),
        rng.integers(0, 4, size=(70, 50)).astype(np.float32),
    ):
        level = data[:, 0].astype(float)
        for width in (3, 15):
            filtered = ndimage.median_filter(level, size=width, mode="nearest")
            assert F._band_count(level, width, 0.1) == int(
                (np.abs(level - filtered) / 0.1 > 3).sum()
            )


def with_extremes(data: np.ndarray) -> np.ndarray:
    """A per-line table as the accumulator keeps it, with only the extremes filled in."""
    table = np.full((len(data), F._LINE_VALUES), np.nan)
    table[:, F._MIN], table[:, F._MAX] = data.min(axis=1), data.max(axis=1)
    return table


def sample_cases(rng: np.random.Generator) -> list[np.ndarray]:
    """Samples past FINE_BINS values (the counting path) and below it, with ties, values
    on the histogram edges, long tails, a narrow range far from zero, and constant ones."""
    mostly_flat = np.full((40, 128), 7.0)
    mostly_flat[3, :5] = [1.0, 9.0, 9.5, -3.0, 20.0]
    huge = np.full((40, 128), 1e20)
    huge[5, :3] = [1e19, 3e20, 2e20]
    # both quantiles 5.0, so the edges run 5 .. 6, far from where the quantiles put them,
    # and values lie on them: bins far from where the quantiles lie straddle the edges
    beyond = np.full((40, 128), 5.0)
    beyond[1, :20] = 5 + np.arange(1, 21) / 64
    beyond[2, :20] = rng.uniform(4, 5, 20)
    return [
        rng.normal(size=(70, 128)),
        np.sort(rng.normal(size=70 * 128)).reshape(70, 128),
        np.sort(rng.normal(size=70 * 128))[::-1].reshape(70, 128).copy(),
        rng.integers(0, 4, size=(70, 128)).astype(np.float32),  # values on bin edges
        np.round(rng.normal(size=(70, 128)) * 50).astype(np.float32) / 8,
        rng.standard_cauchy(size=(70, 128)),
        1e6 + rng.normal(size=(70, 128)) * 1e-7,  # a range of ~1e-12 of the magnitude
        (rng.normal(size=(70, 128)) * 1e-9).astype(np.float32),
        mostly_flat,  # both quantiles equal: edges lo .. lo + 1
        huge,  # lo + 1 == lo: degenerate edges
        beyond,
        np.full((40, 128), -2.5),  # no spread at all
        rng.normal(size=(20, 50)),  # below FINE_BINS values
    ]


def test_the_sample_histogram_gives_numpys_quantiles_and_histogram():
    rng = np.random.default_rng(0)
    for data in sample_cases(rng):
        for rows in (np.arange(len(data)), np.arange(1, len(data), 2)):
            pooled = data[rows].astype(float).ravel()
            lo, hi, hist = F._sample_histogram(data, rows, with_extremes(data))
            assert (lo, hi) == tuple(np.quantile(pooled, [0.005, 0.995]))
            edges = np.linspace(lo, hi if hi > lo else lo + 1.0, F.ENTROPY_BINS + 1)
            np.testing.assert_array_equal(F._edges(lo, hi), edges)
            if np.all(np.diff(edges) > 0):
                np.testing.assert_array_equal(hist, np.histogram(pooled, bins=edges)[0])
            else:  # numpy's search over tied edges is not its equal-bin rule
                np.testing.assert_array_equal(hist, F._histogram(data, rows, edges))


def test_edges_are_np_linspace():
    rng = np.random.default_rng(4)
    pairs = [(0.0, 0.0), (1e20, 1e20), (-1e-310, 1e-310), (5e-324, 1e-322), (0.0, 1e-320)]
    pairs += [
        tuple(np.sort(rng.normal(size=2) * 10.0 ** rng.integers(-300, 300))) for _ in range(200)
    ]
    for lo, hi in pairs:
        expected = np.linspace(lo, hi if hi > lo else lo + 1.0, F.ENTROPY_BINS + 1)
        np.testing.assert_array_equal(F._edges(lo, hi), expected)


def test_the_median_network_gives_np_median_for_every_count_and_ties():
    """Columns of 1..64 values (ties, signed zeros, infinities, integers as floats), several
    counts in one call, against np.median."""
    rng = np.random.default_rng(5)
    width = F.NETWORK_VALUES
    for trial in range(6):
        counts = rng.permutation(np.arange(1, width + 1))
        values = rng.normal(size=(width, width)) * 10.0 ** rng.integers(-8, 8)
        if trial % 2:
            values = np.round(values / values.std() * 2)  # many ties, zeros of both signs
            values[rng.random(values.shape) < 0.05] = -0.0
        if trial == 5:
            values[rng.random(values.shape) < 0.1] = np.inf
            values[rng.random(values.shape) < 0.1] = -np.inf
        columns = [values[: counts[lane], lane].copy() for lane in range(width)]
        out = np.empty(width)
        F._network_medians(values, counts, width, F._MEDIAN_PAIRS, out)
        with np.errstate(invalid="ignore"):
            expected = [np.median(column) for column in columns]
        np.testing.assert_array_equal(out, expected)


@pytest.fixture(scope="module")
def shipped() -> C.Classifier:
    return C.load_default()


def test_the_shipped_model_takes_the_fast_path_and_agrees_with_sklearn(shipped, data_root):
    assert shipped.linear is not None
    rng = np.random.default_rng(1)
    vectors = [rng.normal(size=(500, 11)) * 10 ** rng.uniform(-2, 2, size=11)]
    for path in sorted((data_root / "ofdspm").rglob("*.ibw"))[::4]:
        scan = ibw.read_scan(path)
        vectors.append(shipped.features(score_scan(scan), scan)[None, :])
    rows = np.vstack(vectors)
    fast = shipped.predict_vectors(rows)
    np.testing.assert_allclose(
        fast, shipped.estimator.predict_proba(rows)[:, 1], rtol=0, atol=1e-12
    )
    assert np.ptp(fast) > 0.5  # failing and passing rows alike


def test_other_estimators_and_odd_rows_go_to_sklearn(shipped):
    X = np.random.default_rng(2).normal(size=(60, 11))
    forest = CalibratedClassifierCV(RandomForestClassifier(5, random_state=0), cv=3)
    forest.fit(X, X[:, 0] > 0)
    assert C.LinearSigmoid.extract(forest) is None
    assert C.LinearSigmoid.extract(shipped.estimator.calibrated_classifiers_[0]) is None
    with pytest.raises(ValueError, match="NaN"):
        shipped.predict_vectors(np.full(11, np.nan))


def test_a_verdict_from_the_accumulator_equals_the_one_from_the_arrays(shipped):
    scan, _ = synth.failing_scan(seed=6, lines=96, points=128, fault="tracking_loss", at=0.4)
    frame = score_scan(scan)
    acc = ChannelStatsAccumulator(scan.channels, 128, lines=96)
    for i in range(96):
        acc.push({name: data[i] for name, data in scan.channels.items()})
    for finished in (False, True):
        assert shipped.verdict(frame, acc, finished) == shipped.verdict(frame, scan, finished)
    np.testing.assert_array_equal(shipped.features(frame, acc), shipped.features(frame, scan))


def test_a_block_is_kept_like_its_lines_or_refused_whole():
    scan, _ = synth.failing_scan(seed=6, lines=40, points=32, fault="tip_change", at=0.5)
    names = list(scan.channels)
    data = {name: scan.channels[name].astype(np.float32) for name in names}
    acc = ChannelStatsAccumulator(names, 32, lines=4)  # grows inside a block
    for start in (0, 3, 20):
        stop = {0: 3, 3: 20, 20: 40}[start]
        acc.push_block({name: rows[start:stop] for name, rows in data.items()})
    np.testing.assert_array_equal(acc.features(), channel_features(data))
    for bad in (
        {name: rows[:2] for name, rows in data.items() if name != names[0]},  # one missing
        {name: rows[:2].astype(np.float64) for name, rows in data.items()},  # another dtype
        {name: rows[:2, :16] for name, rows in data.items()},  # too short
    ):
        with pytest.raises(ValueError, match="is not"):
            acc.push_block(bad)
    assert acc.n_lines == 40


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
@pytest.mark.parametrize("kind", ["tip_change", "dropout"])
def test_a_whole_frame_at_once_gives_channel_features(kind: str, dtype):
    scan, _ = synth.failing_scan(seed=9, lines=90, points=96, fault=kind, at=0.4)
    scaled = {name: 100 * data for name, data in scan.channels.items()}
    if np.dtype(dtype).kind == "i":  # integer samples have no NaN (a dropout is zeros then)
        scaled = {name: np.nan_to_num(data) for name, data in scaled.items()}
    channels = {name: data.astype(dtype) for name, data in scaled.items()}
    held = ChannelStatsAccumulator.of_frame(channels)
    assert held.n_lines == 90 and held.channels()["HeightTrace"].dtype == np.result_type(
        np.float32, dtype
    )
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(held.features(), channel_features(channels))


def test_a_real_saved_frame_at_once_gives_channel_features(data_root: Path):
    scan = ibw.read_scan(data_root / "ofdspm/bad/H_90Cs10MA_0000.ibw")
    held = ChannelStatsAccumulator.of_frame(scan.channels)
    np.testing.assert_array_equal(held.features(), channel_features(scan.channels))


def test_frames_that_do_not_fit_one_block_are_refused_by_name():
    with pytest.raises(ValueError, match="one \\(lines, points\\) shape"):
        ChannelStatsAccumulator.of_frame({"A": np.ones((4, 8)), "B": np.ones((4, 9))})
    with pytest.raises(ValueError, match="not real numbers"):
        ChannelStatsAccumulator.of_frame({"A": np.ones((4, 8), complex)})
    with pytest.raises(ValueError, match="one \\(lines, points\\) shape"):
        ChannelStatsAccumulator.of_frame({})
