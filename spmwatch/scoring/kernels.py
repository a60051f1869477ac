"""Numba kernels of the per-line scorer: arrays in, numbers out.

Nothing here does I/O, logs or touches Python objects. Every kernel writes into buffers the
caller preallocated once per scan, so scoring a line in steady state allocates nothing. The
per-scan state (line history, robust baseline, lateral lag votes, spectrum baseline) lives in
the arrays of `ScanState` and is advanced by `score_line`; `score_frame` runs the same
`score_line` over a whole frame in one call, so streaming and batch results are identical.
`reference.py` is the plain numpy twin of each kernel.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from spmwatch.selection import median_in_place

# Per-channel raw features (columns of a channel's block in the raw vector).
CH_LEVEL, CH_RMS, CH_SHARP, CH_DECOR, CH_SCAR, CH_VDIFF = range(6)
N_CH_RAW = 6
# Per-pair raw features.
PR_RMS, PR_MAX, PR_DECOR = range(3)
N_PAIR_RAW = 3

# Feature families: columns of the per-line feature row (all robust z, max over channels).
(
    F_LEVEL,
    F_RMS,
    F_SHARP,
    F_DECOR,
    F_SCAR,
    F_RES_RMS,
    F_RES_MAX,
    F_TR_DECOR,
    F_RING,
    F_DROPOUT,
    F_SCAR_FRACTION,
    F_SCAR_WIDTH,
    F_SCORE,
) = range(13)
N_FEATURES = 13
N_FAMILIES = 10  # families F_LEVEL..F_DROPOUT compete for the score and the kind

# Settings vector (float64), filled by ScoringSettings.as_array().
(
    S_WINDOW,
    S_MIN_BASELINE,
    S_REFRESH,
    S_Z_CLIP,
    S_FLAG_Z,
    S_DROPOUT_FRACTION,
    S_SAT_FRACTION,
    S_SCAR_HARD,
    S_SCAR_SOFT,
    S_SCAR_MIN_LEN,
    S_LAG_MAX,
    S_LAG_VOTES,
    S_LAG_EVERY,
    S_SPEC_ALPHA,
    S_SPEC_KLO,
    S_LEVEL_FLOOR,
    S_CLIP,
    S_LAG_RECHECK,
    S_TOPO_CONTRAST,
    S_TOPO_KMIN,
    S_TOPO_BOOST,
    S_STEP_LINES,
    S_ABRUPT,
) = range(23)
N_SETTINGS = 23

# Integer state vector.
(
    I_LINES,
    I_HIST_N,
    I_HIST_HEAD,
    I_BASE_N,
    I_BASE_HEAD,
    I_SINCE_REFRESH,
    I_VOTES,
    I_SPEC_N,
    I_AFTER_DROPOUT,
    I_STEP_RUN,
    I_STEP_SINCE,
    I_REF_SLOT,
) = range(12)
N_STATE = 12

# Rows of the per-channel level state `ref_level` (ScanState.ref_level): the level and slope
# of the reference line (the last accepted one), the levels before and of a watched step
# (_held_step), the previous line's level, and the largest line-to-line level change since
# the reference line (score_line, "a level built up over several lines").
R_LEVEL, R_BEFORE_STEP, R_STEP, R_SLOPE, R_PREV, R_CLIMB = range(6)
N_REF_ROWS = 6

SCAR_MAX_WIDTH = 4
HIST_DEPTH = SCAR_MAX_WIDTH + 2  # band of 4 + the older neighbour + the newest line
TINY = 1e-300
UNIT_EXP_MAX = 126  # unit_of: 2^-126 .. 2^126, float32's normal range

# Reassociation lets LLVM vectorise the sums (results move by rounding only); no-NaN/no-inf
# flags are left out on purpose, they would fold away the isfinite tests of the dropout check.
_OPTS = {
    "cache": True,
    "nogil": True,
    "fastmath": {"reassoc", "nsz", "contract"},
    "error_model": "numpy",
}


@intrinsic
def _f64_bits(typingctx, x):
    """The IEEE-754 bits of a float64 as an int64 (a bit cast, no conversion)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _bits_f64(typingctx, bits):
    """The float64 whose IEEE-754 bits are this int64 (a bit cast, no conversion)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _prefetch(typingctx, row, i):
    """Ask the cache for the line of memory holding row[i] (llvm.prefetch: read, keep)."""
    if not isinstance(row, types.Array):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        address = builder.gep(array.data, [args[1]])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty=fnty)
        ptr = builder.bitcast(address, i8p)
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(row, types.intp), codegen


LN2 = math.log(2.0)
SQRT2 = math.sqrt(2.0)
# 1 / (2j + 1) for the odd series of atanh, highest first (Horner)
_ATANH_COEF = tuple(1.0 / (2 * j + 1) for j in range(10, -1, -1))


@njit(inline="always", **_OPTS)
def fast_log(x):
    """Natural log of a positive float64 to about 1 ulp, without a branch, so that a loop
    over it vectorises (a libm log is a call per value: ~15 ns).

    x = 2^e m with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s), s = (m - 1) / (m + 1),
    |s| < 0.172, and 11 odd terms of the series reach double precision. +inf and NaN come
    back as themselves (their log); zero, negative and subnormal inputs are not supported.
    """
    b = _f64_bits(x)
    e_raw = b >> 52
    m = _bits_f64((b & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000)
    big = m > SQRT2
    m = 0.5 * m if big else m
    e = e_raw - 1023 + big
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    p = 0.0
    for c in _ATANH_COEF:
        p = p * z + c
    v = e * LN2 + 2.0 * s * p
    return v if e_raw < 0x7FF else x


@intrinsic
def _order_key(typingctx, x):
    """An int of x's width that orders like the float x (finite values, -0 < +0).

    Integer min/max reductions vectorise; float ones do not without no-NaN fast-math, which
    would also fold away the isfinite tests of the dropout check. `_key_value` undoes it.
    """
    if x not in (types.float32, types.float64):
        return None
    width = x.bitwidth

    def codegen(context, builder, signature, args):
        return _flip_negative(builder, builder.bitcast(args[0], ir.IntType(width)), width)

    return (types.int32 if width == 32 else types.int64)(x), codegen


def _flip_negative(builder: ir.IRBuilder, bits: ir.Value, width: int) -> ir.Value:
    """The bits of a negative float with all but the sign inverted (the others as they are):
    the order-key map, which is its own inverse."""
    ity = ir.IntType(width)
    sign = builder.ashr(bits, ir.Constant(ity, width - 1))
    return builder.xor(bits, builder.and_(sign, ir.Constant(ity, (1 << (width - 1)) - 1)))


@intrinsic
def _finite(typingctx, x):
    """Whether the float x is finite, from its exponent bits. math.isfinite of a float32
    computed in a loop under this module's fast-math flags was seen to come out True for
    -inf; an integer test of the bits cannot be folded away."""
    if x not in (types.float32, types.float64):
        return None
    width = x.bitwidth
    exponent = 0x7F800000 if width == 32 else 0x7FF0000000000000

    def codegen(context, builder, signature, args):
        ity = ir.IntType(width)
        bits = builder.and_(builder.bitcast(args[0], ity), ir.Constant(ity, exponent))
        return builder.icmp_unsigned("!=", bits, ir.Constant(ity, exponent))

    return types.boolean(x), codegen


@intrinsic
def _key_value(typingctx, key):
    """The float whose order key (`_order_key`) this is: float32 for an int32 key."""
    if key not in (types.int32, types.int64):
        return None
    width = key.bitwidth

    def codegen(context, builder, signature, args):
        bits = _flip_negative(builder, args[0], width)
        return builder.bitcast(bits, ir.FloatType() if width == 32 else ir.DoubleType())

    return (types.float32 if width == 32 else types.float64)(key), codegen


@njit(**_OPTS)
def unit_of(x):
    """The power of two that brings the span of x's finite samples into [0.5, 1) (within
    2^+-UNIT_EXP_MAX), or 0.0 for a line without a span (constant, or < 2 finite samples).

    A scan's lines are measured in such a unit of each channel, chosen on the channel's first
    line with a span (score_line), so that the float32 squares of line_stats and residual
    neither underflow nor overflow whatever unit the data come in (SI metres: spans ~1e-9;
    spans from ~1e-38 to ~1e38 are measured). Every feature is a robust z against the scan's
    own lines, so a fixed unit changes none.
    """
    lo = np.inf
    hi = -np.inf
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        if _finite(v):
            lo = min(lo, v)
            hi = max(hi, v)
    span = hi - lo
    if not span > 0.0:
        return 0.0
    e = math.frexp(span)[1] if _finite(span) else UNIT_EXP_MAX
    return math.ldexp(1.0, min(max(-e, -UNIT_EXP_MAX), UNIT_EXP_MAX))


@njit(**_OPTS)
def _finite_sums(x, unit):
    """(pilot, sum y, sum (i - half) y, sum (i - half)^2, good, lo, hi) over the samples
    whose y = (x - pilot) unit is finite in float32 (pilot: the first finite sample), the
    sums in float64; lo and hi are those samples' extremes in x's type. The careful first
    pass, for lines holding NaN or inf (or values that overflow float32)."""
    n = x.shape[0]
    half = 0.5 * (n - 1)
    first = 0
    while first < n - 1 and not _finite(x[first]):
        first += 1
    pilot = x[first]  # in x's type; a line with no finite sample sums nothing below
    s = 0.0
    sx = 0.0
    st = 0.0
    sxx = 0.0
    good = 0
    lo = hi = pilot
    for i in range(n):
        v = x[i]
        y = np.float32((np.float64(v) - pilot) * unit)
        if _finite(v) and _finite(y):
            s += y
            sx += y * (i - half)
            st += i - half
            sxx += (i - half) * (i - half)
            good += 1
            lo = min(lo, v)
            hi = max(hi, v)
    # the slope is sum (i - half) x / sum (i - half)^2 over these samples; with some left out,
    # sum (i - half) is not 0, so the pilot taken off y comes back in
    return pilot, s, sx + np.float64(pilot) * unit * st, sxx, good, lo, hi


@njit(inline="always", **_OPTS)
def _detrend_pass(x, prev, out, u, pu, mean, slope, lo, hi, checked, acc):
    """The second pass of line_stats: write the detrended line d = (x u - pu) - mean -
    slope t in float32 and accumulate, in acc, [sum d^2, sum (d_i - d_i-1)^2, sum d p,
    sum p^2, sum (d - p)^2, samples at hi, at lo, zeros]. The counts compare x itself, so
    they are exact. `checked` (a constant at each call, so the test folds away when False)
    writes the samples left out of the sums as 0. Counts are float sums: a masked add per
    vector."""
    n = x.shape[0]
    one = np.float32(1.0)
    zero = np.float32(0.0)
    t = np.float32(-0.5 * (n - 1))
    ss = sd = sdp = spp = sdd = n_hi = n_lo = zeros = zero
    before = np.float32(x[0] * u - pu) - mean - slope * t  # d_0: the first difference is 0
    if checked:
        before = before if _finite(before) else zero
    for i in range(n):
        v = x[i]
        n_hi += one if v == hi else zero
        n_lo += one if v == lo else zero
        zeros += one if v == zero else zero
        y = np.float32(v * u - pu)
        d = y - mean - slope * t
        if checked:
            d = d if _finite(y) else zero
        t += one
        out[i] = d
        e = d - before
        before = d
        sd += e * e
        p = prev[i]
        ss += d * d
        sdp += d * p
        spp += p * p
        sdd += (d - p) * (d - p)
    acc[0] = ss
    acc[1] = sd
    acc[2] = sdp
    acc[3] = spp
    acc[4] = sdd
    acc[5] = n_hi
    acc[6] = n_lo
    acc[7] = zeros


@njit(**_OPTS)
def line_stats(x, unit, prev, out_detrended, stats):
    """Detrend one line (offset + slope by least squares), measure it and compare it with
    the previous line's detrended values `prev`, in the channel's `unit` (unit_of).

    stats (>= 16 values, the last 8 scratch) <- [level, slope, rms, diff_rms, bad_fraction,
    flat_fraction, corr, vdiff_rms]: bad_fraction is the larger share of non-finite or
    exactly zero samples, 1.0 when the line is constant (a lost line); flat_fraction the
    larger share of samples pinned at the line max or min (a segment of a live line
    saturated or parachuting: tracking loss, not a dropout); corr and vdiff_rms are
    `line_pair(detrended, prev)`. Non-finite samples are written as 0 in `out_detrended`.
    Values are in `unit`s: level, slope, rms and the detrended row x unit.

    The arithmetic is float32 (16 lanes a vector instead of 8) on y = (x - pilot) unit, the
    pilot being the line's first sample: taking it off first keeps the values' resolution
    relative to the line's own span, not to its offset, so the errors are those of the
    data's float32 resolution (Asylum saves float32). out_detrended and prev are float32.

    Two passes, branch-free so they vectorise: the sums and the min/max (through order keys
    of the bits), then the detrended values with everything measured on them. The first
    pass does not test each sample for NaN or inf: a non-finite sample makes the plain sums
    non-finite, and only then is the line summed again sample by sample (_finite_sums).
    """
    n = x.shape[0]
    one = np.float32(1.0)
    s32 = np.float32(0.0)
    sx32 = np.float32(0.0)
    t = np.float32(-0.5 * (n - 1))
    pilot = x[0]
    u = np.float32(unit)  # a power of two: x u is exact
    pu = np.float32(np.float64(pilot) * unit)
    key_lo = key_hi = _order_key(pilot)
    for i in range(n):
        v = x[i]
        y = np.float32(v * u - pu)
        s32 += y
        sx32 += y * t
        t += one
        k = _order_key(v)
        key_lo = k if k < key_lo else key_lo
        key_hi = k if k > key_hi else key_hi
    checked = not (_finite(s32) and _finite(sx32))
    if checked:
        pilot, s, sx, sxx, good, lo, hi = _finite_sums(x, unit)
        pu = np.float32(np.float64(pilot) * unit)
    else:
        s = np.float64(s32)
        sx = np.float64(sx32)
        sxx = n * (n * n - 1.0) / 12.0  # sum of (i - half)^2 (exact below ~100,000 points)
        good = n
        lo = _key_value(key_lo)
        hi = _key_value(key_hi)
    acc = stats[8:16]
    if good < 2 or hi == lo:
        spp = 0.0
        for i in range(n):
            out_detrended[i] = 0.0
            spp += prev[i] * prev[i]
        stats[0] = pu + s / good if good > 0 else 0.0
        stats[1] = 0.0
        stats[2] = 0.0
        stats[3] = 0.0
        stats[4] = 1.0
        stats[5] = 1.0
        stats[6] = 0.0
        stats[7] = math.sqrt(spp / n)
        return
    mean = s / good
    slope = sx / sxx if sxx > 0.0 else 0.0
    mean32 = np.float32(mean)
    slope32 = np.float32(slope)
    if checked:
        _detrend_pass(x, prev, out_detrended, u, pu, mean32, slope32, lo, hi, True, acc)
    else:
        _detrend_pass(x, prev, out_detrended, u, pu, mean32, slope32, lo, hi, False, acc)
    ss = acc[0]
    denom = math.sqrt(ss * acc[3])
    stats[0] = pu + mean
    stats[1] = slope
    stats[2] = math.sqrt(ss / n)
    stats[3] = math.sqrt(acc[1] / (n - 1))
    stats[4] = max(n - good, acc[7]) / n
    stats[5] = max(acc[5], acc[6]) / n
    stats[6] = acc[2] / denom if denom > 0.0 else 0.0
    stats[7] = math.sqrt(acc[4] / n)


@njit(**_OPTS)
def line_pair(a, b):
    """(correlation, RMS of the difference) of two detrended lines of equal length."""
    sab = 0.0
    saa = 0.0
    sbb = 0.0
    sdd = 0.0
    n = a.shape[0]
    for i in range(n):
        sab += a[i] * b[i]
        saa += a[i] * a[i]
        sbb += b[i] * b[i]
        d = a[i] - b[i]
        sdd += d * d
    denom = math.sqrt(saa * sbb)
    corr = sab / denom if denom > 0.0 else 0.0
    return corr, math.sqrt(sdd / n)


@njit(**_OPTS)
def residual(trace, retrace, lag, out):
    """Trace minus retrace after shifting by `lag` px: trace[i + lag] - retrace[i].

    The residual over the overlap has its own offset and slope removed (the two directions
    drift apart slightly). out <- [rms, max |residual|, trace/retrace correlation]. float32
    arithmetic, like line_stats that wrote the rows (16 lanes a vector).
    """
    n = trace.shape[0]
    i0 = max(0, -lag)
    i1 = min(n, n - lag)
    m = i1 - i0
    if m < 4:
        out[0] = 0.0
        out[1] = 0.0
        out[2] = 1.0
        return
    one = np.float32(1.0)
    t0 = np.float32(-0.5 * (m - 1))
    tt = trace[i0 + lag : i1 + lag]  # the overlap, so the loops index from 0 and vectorise
    rr = retrace[i0:i1]
    s = sx = stt = srr = str_ = np.float32(0.0)
    x = t0
    for i in range(m):
        t = np.float32(tt[i])
        r = np.float32(rr[i])
        d = t - r
        s += d
        sx += d * x
        x += one
        stt += t * t
        srr += r * r
        str_ += t * r
    sxx = m * (m * m - 1.0) / 12.0
    mean = np.float32(s / m)
    slope = np.float32(sx / sxx)
    ss = np.float32(0.0)
    top = _order_key(ss)  # the largest |d| through its order key: an int max vectorises
    x = t0
    for i in range(m):
        d = np.float32(tt[i]) - np.float32(rr[i]) - mean - slope * x
        x += one
        ss += d * d
        key = _order_key(abs(d))
        top = key if key > top else top
    denom = math.sqrt(np.float64(stt) * np.float64(srr))
    out[0] = math.sqrt(ss / m)
    out[1] = _key_value(top)
    out[2] = str_ / denom if denom > 0.0 else 0.0


@njit(**_OPTS)
def _line_sums(x):
    """(sum x, sum i x, sum x^2) over the whole line."""
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    for i in range(x.shape[0]):
        v = x[i]
        s0 += v
        s1 += i * v
        s2 += v * v
    return s0, s1, s2


LAG_BLOCK = 8  # lags whose cross products share one pass (one load of the retrace each)


def lag_scratch_size(points: int, lag_max: int) -> int:
    """Floats best_lag needs as scratch: the zero-padded trace, then the blocks' products."""
    return points + 4 * lag_max + 2 * LAG_BLOCK + 1


@njit(**_OPTS)
def _cross_products(trace, retrace, lo, hi, scratch):
    """Returns the cross products: [j] = sum over the overlap of trace[i + lo + j] *
    retrace[i], j = 0..hi - lo (a view into the scratch).

    The trace is copied into the scratch with zeros around it, so every lag's product is a
    sum over the whole line (the zeros add nothing) and LAG_BLOCK consecutive lags share one
    pass: one load of retrace[i] serves all of them. A 512-point product alone is bound by
    its two loads per multiply (~50 ns); eight at a time take ~32 ns each.
    """
    n = trace.shape[0]
    reach = max(abs(lo), abs(hi))
    count = hi - lo + 1
    size = n + 2 * reach + LAG_BLOCK  # the last block reads up to LAG_BLOCK - 1 lags past hi
    padded = scratch[:size]
    products = scratch[size:]
    for i in range(size):
        padded[i] = 0.0
    padded[reach : reach + n] = trace
    for first in range(0, count, LAG_BLOCK):
        # seg[i] is trace[i + lo + first]; a slice, so every index below is i + constant >= 0:
        # indexing padded at a run-time offset kept numba's negative-index test in the loop,
        # and it ran scalar, 3x slower than one product per lag
        seg = padded[reach + lo + first : reach + lo + first + n + LAG_BLOCK - 1]
        d0 = d1 = d2 = d3 = d4 = d5 = d6 = d7 = 0.0
        for i in range(n):
            r = retrace[i]
            d0 += seg[i] * r
            d1 += seg[i + 1] * r
            d2 += seg[i + 2] * r
            d3 += seg[i + 3] * r
            d4 += seg[i + 4] * r
            d5 += seg[i + 5] * r
            d6 += seg[i + 6] * r
            d7 += seg[i + 7] * r
        products[first] = d0
        products[first + 1] = d1
        products[first + 2] = d2
        products[first + 3] = d3
        products[first + 4] = d4
        products[first + 5] = d5
        products[first + 6] = d6
        products[first + 7] = d7
    return products[:count]


@njit(inline="always", **_OPTS)
def _lag_mean_square(n, lag, dot, t, r):
    """Residual mean square of `residual` at `lag` from sums over the overlap: the cross
    product and, per line, t and r = (sum x, sum i x, sum x^2) with i the line's own index."""
    i0 = max(0, -lag)
    m = min(n, n - lag) - i0
    if m < 4:
        return 0.0  # as `residual`: too little overlap scores 0
    sd = t[0] - r[0]
    # sum over the overlap of (i - i0) * d_i, then centred
    sxd = (t[1] - (i0 + lag) * t[0]) - (r[1] - i0 * r[0]) - 0.5 * (m - 1) * sd
    sxx = m * (m * m - 1.0) / 12.0
    return max(t[2] + r[2] - 2.0 * dot - sd * sd / m - sxd * sxd / sxx, 0.0) / m


@njit(**_OPTS)
def best_lag(trace, retrace, lo, hi, scratch):
    """The shift in [lo, hi] minimising the residual RMS of one line pair (first on ties).

    Same criterion as `residual` at every lag, but from sums: the cross products in blocks
    (_cross_products), and the sums of x, i x, x^2 over an overlap as the whole line's less
    its first or last |lag| samples, accumulated as |lag| grows. `scratch`: >=
    lag_scratch_size(points, max(|lo|, |hi|)) floats.
    """
    n = trace.shape[0]
    dots = _cross_products(trace, retrace, lo, hi, scratch)
    t0, t1, t2 = _line_sums(trace)
    r0, r1, r2 = _line_sums(retrace)
    # the sums of each line's first k samples (head) and last k (tail), k = |lag|
    th0 = th1 = th2 = tl0 = tl1 = tl2 = 0.0
    rh0 = rh1 = rh2 = rl0 = rl1 = rl2 = 0.0
    best = lo
    best_ms = np.inf
    for k in range(max(abs(lo), abs(hi)) + 1):
        if lo <= k <= hi:  # trace[i + k] against retrace[i]: the trace's head, retrace's tail out
            t = (t0 - th0, t1 - th1, t2 - th2)
            ms = _lag_mean_square(n, k, dots[k - lo], t, (r0 - rl0, r1 - rl1, r2 - rl2))
            if ms < best_ms or (ms == best_ms and k < best):
                best_ms, best = ms, k
        if k > 0 and lo <= -k <= hi:
            t = (t0 - tl0, t1 - tl1, t2 - tl2)
            ms = _lag_mean_square(n, -k, dots[-k - lo], t, (r0 - rh0, r1 - rh1, r2 - rh2))
            if ms < best_ms or (ms == best_ms and -k < best):
                best_ms, best = ms, -k
        if k < n:
            a = k
            b = n - 1 - k
            v = trace[a]
            th0, th1, th2 = th0 + v, th1 + a * v, th2 + v * v
            v = trace[b]
            tl0, tl1, tl2 = tl0 + v, tl1 + b * v, tl2 + v * v
            v = retrace[a]
            rh0, rh1, rh2 = rh0 + v, rh1 + a * v, rh2 + v * v
            v = retrace[b]
            rl0, rl1, rl2 = rl0 + v, rl1 + b * v, rl2 + v * v
    return best


@njit(inline="always", **_OPTS)
def _band_excess(newest, r1, r2, r3, r4, r5, w, i, sign):
    """How far the band of the w lines r1..rw before the newest sits above (sign > 0) or
    below both neighbours at pixel i: the newest line and the line before the band. In
    float64 like the grid test (the float32 rows are widened into the grid), so the two agree."""
    a = np.float64(newest[i])
    lo = hi = np.float64(r1[i])
    b = np.float64(r2[i])
    if w >= 2:
        lo, hi = min(lo, b), max(hi, b)
        b = np.float64(r3[i])
    if w >= 3:
        lo, hi = min(lo, b), max(hi, b)
        b = np.float64(r4[i])
    if w >= 4:
        lo, hi = min(lo, b), max(hi, b)
        b = np.float64(r5[i])
    if sign > 0:
        return lo - max(a, b)
    return min(a, b) - hi


@njit(inline="always", **_OPTS)
def _scar_run(newest, r1, r2, r3, r4, r5, w, anchor, sign, soft_t, hard_t):
    """The run [lo, hi) of pixels around `anchor` whose band excess reaches soft_t, and
    whether any of them reaches hard_t."""
    n = newest.shape[0]
    hit = _band_excess(newest, r1, r2, r3, r4, r5, w, anchor, sign) >= hard_t
    lo = anchor
    while lo > 0:
        e = _band_excess(newest, r1, r2, r3, r4, r5, w, lo - 1, sign)
        if e < soft_t:
            break
        hit = hit or e >= hard_t
        lo -= 1
    hi = anchor + 1
    while hi < n:
        e = _band_excess(newest, r1, r2, r3, r4, r5, w, hi, sign)
        if e < soft_t:
            break
        hit = hit or e >= hard_t
        hi += 1
    return lo, hi, hit


@njit(**_OPTS)
def scar_grid_step(min_len):
    """(step, points per run) of the scar grid: a run of min_len px or more covers `need`
    consecutive grid points of step min_len // need."""
    need = min(4, max(min_len, 1))
    return max(min_len // need, 1), need


@njit(**_OPTS)
def store_scar_grid(line, grid_row, step):
    """grid_row[g] = line[g * step]: the newest line's scar grid (see scar_fraction)."""
    for g in range((line.shape[0] + step - 1) // step):
        grid_row[g] = line[g * step]


@njit(inline="always", **_OPTS)
def _newest_rows(history, head, ch):
    """Channel ch of the newest line (at head) and of the 5 lines before it, newest first."""
    depth = history.shape[0]
    return (
        history[head, ch],
        history[(head - 1) % depth, ch],
        history[(head - 2) % depth, ch],
        history[(head - 3) % depth, ch],
        history[(head - 4) % depth, ch],
        history[(head - 5) % depth, ch],
    )


@njit(**_OPTS)
def scar_fraction(hist, grid, head, count, ch, scale, hard, soft, min_len, scratch):
    """Causal scar score: share of the previous lines' pixels inside a confirmed scar band.

    `hist[head]` is the newest line (just arrived). A band is 1-4 lines just before it; a
    pixel belongs to a scar when the whole band sits above (or below) both neighbours, the
    newest line and the line before the band, by `soft * scale`, in a run of at least
    `min_len` px that reaches `hard * scale` somewhere. Returns (fraction, band width);
    the band is confirmed only now, so its flag is delayed by 1-4 lines.

    A run of min_len px or more covers 4 consecutive pixels of the grid of step min_len // 4.
    So the test runs on the grid first (one branch-free pass: a bit per width and sign), and
    a run is traced pixel by pixel only from a grid point that starts 4 passing grid points
    in a row: the same runs as a full scan, at a fraction of the reads and branches on a clean
    line. The grid values come from `grid` (each line's every step-th pixel, stored by
    store_scar_grid when the line arrived): 6 lines x 4 channels of full rows are ~96 KB, out
    of L1, and reading them cost as much as the test itself. `scratch`: int64, >= 3 *
    SCAR_MAX_WIDTH + points (per width and sign the end of the last run traced, per width the
    pixels marked, then the grid bits).
    """
    n = hist.shape[2]
    best = 0.0
    best_w = 0
    widths = min(SCAR_MAX_WIDTH, count - 2)
    if scale <= 0.0 or widths < 1:
        return best, best_w
    hard_t = hard * scale
    soft_t = soft * scale
    step, need = scar_grid_step(min_len)
    newest, r1, r2, r3, r4, r5 = _newest_rows(hist, head, ch)
    for j in range(3 * SCAR_MAX_WIDTH):
        scratch[j] = 0
    done = scratch[: 2 * SCAR_MAX_WIDTH]
    marked = scratch[2 * SCAR_MAX_WIDTH : 3 * SCAR_MAX_WIDTH]
    bits = scratch[3 * SCAR_MAX_WIDTH :]
    n_grid = (n + step - 1) // step
    g0, g1, g2, g3, g4, g5 = _newest_rows(grid, head, ch)
    for g in range(n_grid):
        a = g0[g]
        v1 = g1[g]
        v2 = g2[g]
        v3 = g3[g]
        v4 = g4[g]
        v5 = g5[g]
        # band extremes of widths 1..4 and the line before each band
        lo2 = min(v1, v2)
        hi2 = max(v1, v2)
        lo3 = min(lo2, v3)
        hi3 = max(hi2, v3)
        lo4 = min(lo3, v4)
        hi4 = max(hi3, v4)
        m = 0
        m |= (v1 - max(a, v2) >= soft_t) << 0
        m |= (min(a, v2) - v1 >= soft_t) << 1
        m |= (lo2 - max(a, v3) >= soft_t) << 2
        m |= (min(a, v3) - hi2 >= soft_t) << 3
        m |= (lo3 - max(a, v4) >= soft_t) << 4
        m |= (min(a, v4) - hi3 >= soft_t) << 5
        m |= (lo4 - max(a, v5) >= soft_t) << 6
        m |= (min(a, v5) - hi4 >= soft_t) << 7
        bits[g] = m & ((1 << (2 * widths)) - 1)
    for g in range(n_grid - need + 1):
        c = bits[g]
        for q in range(1, need):
            c &= bits[g + q]
        if c == 0:
            continue
        anchor = g * step
        for slot in range(2 * widths):
            if not (c >> slot) & 1 or anchor < done[slot]:
                continue
            w = slot // 2 + 1
            sign = 1 if slot % 2 == 0 else -1
            start, end, hit = _scar_run(newest, r1, r2, r3, r4, r5, w, anchor, sign, soft_t, hard_t)
            done[slot] = end
            if end - start >= min_len and hit:
                marked[w - 1] += end - start
    for w in range(1, widths + 1):
        frac = marked[w - 1] / n
        if frac > best:
            best = frac
            best_w = w
    return best, best_w


@njit(**_OPTS)
def _fft_stage(src, dst, tw_re, tw_im, h, s):
    """One radix-2 Stockham stage on interleaved complex values (re, im, re, im, ...).

    Pairs the blocks of s values at p and p + h (p < h) into blocks 2p and 2p + 1 of `dst`,
    the difference turned by exp(-i pi p / h). Reading one array and writing another, in
    contiguous runs, is what lets LLVM vectorise it; an in-place radix-2 FFT on separate
    re/im arrays stayed scalar (~0.3 us per stage at 256 points).
    """
    for p in range(h):
        wr = tw_re[h + p]
        wi = tw_im[h + p]
        oa = 2 * s * p
        ob = 2 * s * (p + h)
        o0 = 4 * s * p
        o1 = o0 + 2 * s
        for q in range(s):
            ar = src[oa + 2 * q]
            ai = src[oa + 2 * q + 1]
            br = src[ob + 2 * q]
            bi = src[ob + 2 * q + 1]
            dst[o0 + 2 * q] = ar + br
            dst[o0 + 2 * q + 1] = ai + bi
            dst[o1 + 2 * q], dst[o1 + 2 * q + 1] = _turn(ar - br, ai - bi, wr, wi)


@njit(inline="always", **_OPTS)
def _sum_diff(src, a, b):
    """Sum and difference (re, im, re, im) of the complex values at src[a] and src[b]."""
    return src[a] + src[b], src[a + 1] + src[b + 1], src[a] - src[b], src[a + 1] - src[b + 1]


@njit(inline="always", **_OPTS)
def _turn(re, im, wr, wi):
    """(re + i im) (wr + i wi), as (re, im)."""
    return re * wr - im * wi, re * wi + im * wr


@njit(inline="always", **_OPTS)
def _radix4(src, dst, tw_re, tw_im, h, s, p, q):
    """Butterflies of two consecutive radix-2 Stockham stages, (h, s) then (h/2, 2s), for
    p < h/2, q < s: four inputs in, four outputs out, with the two stages' twiddles."""
    g = h // 2
    i0 = 2 * (s * p + q)
    i1 = i0 + 2 * s * g
    i2 = i1 + 2 * s * g
    i3 = i2 + 2 * s * g
    # stage (h, s): pairs (p, p + h) and (p + h/2, p + 3h/2)
    y0r, y0i, tr, ti = _sum_diff(src, i0, i2)
    y1r, y1i = _turn(tr, ti, tw_re[h + p], tw_im[h + p])
    y2r, y2i, tr, ti = _sum_diff(src, i1, i3)
    y3r, y3i = _turn(tr, ti, tw_re[h + g + p], tw_im[h + g + p])
    # stage (h/2, 2s): (y0, y2) and (y1, y3), the differences turned by one twiddle
    wr = tw_re[g + p]
    wi = tw_im[g + p]
    o = 2 * (4 * s * p + q)
    dst[o] = y0r + y2r
    dst[o + 1] = y0i + y2i
    dst[o + 2 * s] = y1r + y3r
    dst[o + 2 * s + 1] = y1i + y3i
    dst[o + 4 * s], dst[o + 4 * s + 1] = _turn(y0r - y2r, y0i - y2i, wr, wi)
    dst[o + 6 * s], dst[o + 6 * s + 1] = _turn(y1r - y3r, y1i - y3i, wr, wi)


@njit(**_OPTS)
def _fft_stage4(src, dst, tw_re, tw_im, h, s):
    """Two radix-2 Stockham stages in one pass (a radix-4 pass): half the loads and stores.

    The inner loop runs over q < s (contiguous runs, so it vectorises); for s = 1 it runs
    over p instead: an inner loop of one value stays scalar, and that first pass cost as
    much as all the others together.
    """
    if s == 1:
        for p in range(h // 2):
            _radix4(src, dst, tw_re, tw_im, h, 1, p, 0)
    else:
        for p in range(h // 2):
            for q in range(s):
                _radix4(src, dst, tw_re, tw_im, h, s, p, q)


@njit(**_OPTS)
def power_spectrum(x, tw, z_a, z_b, power):
    """Power of the real DFT of x[:2M] at bins 0..M-1 (M = tw.shape[1], a power of two >= 8).

    The real samples, read as M interleaved complex ones (x[2j] + i x[2j+1]), go through a
    Stockham FFT (natural order in and out, no bit reversal; z_a and z_b >= 2M floats take
    turns as source and target), then the even/odd halves are unpacked: half the work
    of a complex FFT of 2M points. tw rows: the unpack twiddles exp(-i pi k / M) (re, im),
    then each stage's twiddles exp(-i pi p / h) at [h + p] (p < h).
    """
    m = tw.shape[1]
    _fft_stage4(x, z_a, tw[2], tw[3], m // 2, 1)
    src = z_a
    dst = z_b
    h = m // 8
    s = 4
    while h >= 2:
        _fft_stage4(src, dst, tw[2], tw[3], h, s)
        src, dst = dst, src
        h //= 4
        s *= 4
    if h == 1:  # an odd number of radix-2 stages: the last one alone
        _fft_stage(src, dst, tw[2], tw[3], 1, s)
        src, dst = dst, src
    # the unpack pairs bin k with its mirror M - k: one iteration makes both bins from the
    # same two values, over k = 1..M/2 (M/2 iterations, so no scalar remainder; the middle
    # bin is made twice), bin 0 on its own (a select of bin 0 inside the loop made it gather)
    tw_re = tw[0]
    tw_im = tw[1]
    power[0] = (src[0] + src[1]) ** 2
    for j in range(m // 2):
        k = j + 1
        c = m - k
        er = 0.5 * (src[2 * k] + src[2 * c])
        ei = 0.5 * (src[2 * k + 1] - src[2 * c + 1])
        orr = 0.5 * (src[2 * k + 1] + src[2 * c + 1])
        oi = -0.5 * (src[2 * k] - src[2 * c])
        wr = tw_re[k]
        wi = tw_im[k]
        xr = er + wr * orr - wi * oi
        xi = ei + wr * oi + wi * orr
        power[k] = xr * xr + xi * xi
        wr = tw_re[c]
        wi = tw_im[c]
        xr = er + wr * orr + wi * oi
        xi = -ei - wr * oi + wi * orr
        power[c] = xr * xr + xi * xi


@njit(**_OPTS)
def spectral_peak(power, base, klo, have_base, log_out):
    """Largest excess of log power (two adjacent bins pooled) over the running baseline.

    Writes the pooled log power into `log_out` (bins klo..M-2; the others hold 0) for the
    caller's baseline update. The logs are taken over all M bins in place, after the pooling:
    a loop of M (a multiple of the vector width) iterations leaves no scalar remainder,
    while the klo..M-2 range left up to 27 bins to scalar code, which cost as much as the
    other ~100. Both loops are branch-free (fast_log, a select for the max), so they
    vectorise.
    """
    m = power.shape[0]
    for k in range(m - 1):
        log_out[k] = power[k] + power[k + 1] + TINY
    for k in range(klo):
        log_out[k] = 1.0
    log_out[m - 1] = 1.0
    for k in range(m):
        log_out[k] = fast_log(log_out[k])
    if not have_base:
        return 0.0
    peak = 0
    for k in range(klo, m - 1):
        key = _order_key(log_out[k] - base[k])
        peak = key if key > peak else peak
    return _key_value(peak)


@njit(**_OPTS)
def persistent_peak(log_pooled, spec, klo, scratch):
    """Largest excess over the running log spectrum that this line and the previous ones
    all reach at one bin: per bin the smallest excess of the last len(spec) lines, the max
    over bins klo..M-2.

    A feedback loop rings at one frequency line after line, while the largest excess of a
    clean line is mostly a chance peak at a new bin each time: requiring it on 3 lines in a
    row (spec rows: the running log spectrum, then the excess of the previous lines, newest
    first, shifted here) lowers the clean lines' values far more than a ringing loop's.
    `scratch`: two C-contiguous rows of >= M (this line's excess, the running minimum; a
    non-contiguous slice of rows made every loop scalar). The loops run over all M bins, the
    bins outside klo..M-2 masked out of the max, so none leaves a scalar remainder; the
    values outside that range must be finite (spectral_peak writes them so).
    """
    depth = spec.shape[0]
    m = log_pooled.shape[0]
    excess = scratch[0]
    low = scratch[1]
    for k in range(m):
        excess[k] = log_pooled[k] - spec[0, k]
        low[k] = excess[k]
    for r in range(1, depth):
        for k in range(m):
            low[k] = min(low[k], spec[r, k])
    top = 0  # the order key of +0.0: the max is taken over keys so that it vectorises
    for k in range(m):
        key = _order_key(low[k]) if klo <= k < m - 1 else 0
        top = key if key > top else top
    for r in range(depth - 1, 1, -1):
        for k in range(m):
            spec[r, k] = spec[r - 1, k]
    if depth > 1:
        for k in range(m):
            spec[1, k] = excess[k]
    return _key_value(top)


@njit(**_OPTS)
def peak_bin(log_pooled, base, klo):
    """The bin in klo..M-2 where the pooled log power most exceeds the running spectrum
    (the first on ties): where spectral_peak found its peak."""
    m = log_pooled.shape[0]
    best = klo
    for k in range(klo + 1, m - 1):
        if log_pooled[k] - base[k] > log_pooled[best] - base[best]:
            best = k
    return best


@njit(**_OPTS)
def local_contrast(log_pooled, k, klo):
    """How far the pooled log power at bins k-1..k+1 (the highest) stands above the line
    fitted through its neighbours k+-4..16 within klo..M-2, in nats (0 with < 2 neighbours).

    A loop that rings moves the z piezo, so its frequency stands out of the topography's
    spectrum too. A line rather than a mean: near klo or M-2 the neighbours sit on one side,
    and a mean of the steep low bins alone would read a smooth spectrum as a bump. It needs
    no running spectrum of that channel (a smooth 1/f-like spectrum gives ~0), so the
    topography's FFT is taken only on lines that already show a peak.
    """
    m = log_pooled.shape[0]
    near = -np.inf
    for j in range(max(k - 1, klo), min(k + 2, m - 1)):
        near = max(near, log_pooled[j])
    n = 0
    sx = 0.0
    sy = 0.0
    sxx = 0.0
    sxy = 0.0
    for j in range(max(k - 16, klo), min(k + 17, m - 1)):
        if abs(j - k) >= 4:
            x = float(j - k)
            y = log_pooled[j]
            n += 1
            sx += x
            sy += y
            sxx += x * x
            sxy += x * y
    if n < 2:
        return 0.0
    # least squares y = a + b x with x = j - k: the fit's value at k is a
    a = (sy * sxx - sx * sxy) / (n * sxx - sx * sx)
    return near - a


@njit(**_OPTS)
def window_replace(rows, count, leaving, entering, carry):
    """Keep every column of rows[:count] sorted while one value leaves it (`leaving`, when
    the window is full: count == rows.shape[0] - 1) and another enters (`entering`).

    rows: float32 (window + 1, width), rows past `count` +inf (the last one always). Row r of
    the new column is the r-th smallest of the old column without the leaving value, U, plus
    the entering one: max(U[r - 1], min(entering, U[r])). One pass down the rows, every
    column at once: plain vector code with no data-dependent branch (a binary search and a
    shift per column mispredicted; sorting the whole ring every few lines cost more).
    """
    width = rows.shape[1]
    full = count == rows.shape[0] - 1
    for f in range(width):
        carry[f] = -np.inf  # U[r - 1]
    for r in range(count if full else count + 1):
        for f in range(width):
            u = rows[r, f]
            below = rows[r + 1, f]  # read either way: a load under a condition stays scalar
            u = below if full and u >= leaving[f] else u
            rows[r, f] = max(carry[f], min(entering[f], u))
            carry[f] = u


@njit(inline="always", **_OPTS)
def _distance(value, med):
    """|value - med| rounded to float32, as the sorted window holds values."""
    return np.float32(abs(np.float64(value) - np.float64(med)))


@njit(**_OPTS)
def _kth_distance(rows, count, med, k, out):
    """out[f] <- the k-th smallest (from 1) |rows[:count, f] - med[f]| of each column.

    Over a sorted column the distances fall up to the middle row h = count // 2 and rise
    from it, two sorted lists: A[j] = |row h - 1 - j - med| and B[j] = |row h + j - med|.
    The k-th smallest of their union is the least over the splits i (i values from A, k - i
    from B) of max(A[i - 1], B[k - i - 1]): at most count / 2 + 1 passes of vector code.
    """
    width = rows.shape[1]
    h = count // 2
    first = max(0, k - (count - h))
    last = min(k, h)
    for f in range(width):
        out[f] = np.inf
    if first == 0:  # all k from B
        for f in range(width):
            out[f] = _distance(rows[h + k - 1, f], med[f])
    if last == k:  # all k from A
        for f in range(width):
            out[f] = min(out[f], _distance(rows[h - k, f], med[f]))
    for i in range(max(first, 1), min(last, k - 1) + 1):
        for f in range(width):
            a = _distance(rows[h - i, f], med[f])
            b = _distance(rows[h + k - i - 1, f], med[f])
            out[f] = min(out[f], max(a, b))


@njit(**_OPTS)
def window_median_mad(rows, count, floors, med, scale, scratch):
    """Median and MAD scale of each column of the sorted window rows[:count] (count >= 1;
    window_replace keeps it), for the first len(med) columns.

    scale = max(1.4826 MAD, floor): the floor keeps a feature that is nearly constant on good
    lines (a scar share of 0, the log RMS of a flat substrate) from turning noise into huge z.
    The values are float32, rounded as they entered; the median of an even count is half
    the float32 sum of the middle two (a halving is exact, so the median row is float32 too).
    scratch: three float32 rows as wide as `rows`.
    """
    width = rows.shape[1]
    h = count // 2
    mid = scratch[0]
    low = scratch[1]
    high = scratch[2]
    if count % 2:
        for f in range(width):
            mid[f] = rows[h, f]
    else:
        for f in range(width):
            mid[f] = np.float32(0.5) * (rows[h - 1, f] + rows[h, f])
    _kth_distance(rows, count, mid, h + 1, high)  # the middle one; for an even count the upper
    if count % 2 == 0:
        _kth_distance(rows, count, mid, h, low)
        for f in range(width):
            high[f] = np.float32(0.5) * (low[f] + high[f])
    for f in range(med.shape[0]):
        med[f] = mid[f]
        scale[f] = max(1.4826 * high[f], floors[f])


@njit(**_OPTS)
def _median_int(votes, count, buf):
    """Lower median of votes[:count], sorted into buf (no allocation)."""
    for i in range(count):
        v = votes[i]
        j = i - 1
        while j >= 0 and buf[j] > v:
            buf[j + 1] = buf[j]
            j -= 1
        buf[j + 1] = v
    return buf[(count - 1) // 2]


@njit(**_OPTS)
def paired_median(d, ref, dslope, scratch):
    """The median over i of d[i] - ref[i] + dslope (i - half): of two detrended lines whose
    slopes differ by dslope, the median of their raw difference less the difference of their
    means. A tip change shifts every sample of a line alike, so this is then 0 and the level
    step is the means' step; a particle or a terrace under part of the line moves the mean
    but not this median (see score_line). `scratch` holds >= len(d) values."""
    n = d.shape[0]
    t = -0.5 * (n - 1)
    for i in range(n):
        scratch[i] = np.float64(d[i]) - np.float64(ref[i]) + dslope * (t + i)
    return median_in_place(scratch, n)


@njit(**_OPTS)
def _level_z(levels, ref, base_med, base_scale, consensus, z_clip):
    """The level family's z of `levels` against the reference levels `ref`: per channel the
    two-sided robust z of the step, clipped to [0, z_clip], the consensus-th largest over
    the channels (as score_line takes every family's z)."""
    first = 0.0
    second = 0.0
    for c in range(levels.shape[0]):
        i = c * N_CH_RAW + CH_LEVEL
        z = min(abs((levels[c] - ref[c]) - base_med[i]) / base_scale[i], z_clip)
        second = max(second, min(first, z))
        first = max(first, z)
    return second if consensus >= 2 else first


@njit(**_OPTS)
def _held_step(levels, ref_level, base_med, base_scale, cons, cfg, calm, after_good, run, since):
    """Watch for a tip change that steps the level by less than the flag threshold: the line
    after it is calm, as the reference (ref_level[R_LEVEL]) follows the step. Returns (run, since,
    held): run counts the lines the watched step has held (0: none), since the lines since
    the last watched step's first line (0: none), held the level's z against the level
    before that step.

    A step of half the threshold from an accepted line is watched: ref_level[R_BEFORE_STEP]
    keeps the level before it, ref_level[R_STEP] the step's own. When the lines after it
    settle at the step's level (a z against it below a quarter of the threshold) and stay half
    the threshold from the level before it, for S_STEP_LINES lines with the step's, the step
    persisted (score_line scores those lines S_TOPO_BOOST more, and the lines after them
    while they stay so). A single odd line comes back to the level before it; a step
    back nearer that level within S_STEP_LINES lines ends a band (it starts no watch of its
    own); a drift or a sloping feature of the sample moves on from the step's level.
    """
    z_clip = cfg[S_Z_CLIP]
    half = 0.5 * cfg[S_FLAG_Z]
    since = since + 1 if since > 0 else 0
    held = 0.0
    moved = 0.0
    if since > 0 and (run > 0 or since <= cfg[S_STEP_LINES]):  # a watch or a band to end
        held = _level_z(levels, ref_level[R_BEFORE_STEP], base_med, base_scale, cons, z_clip)
        moved = _level_z(levels, ref_level[R_STEP], base_med, base_scale, cons, z_clip)
    if not calm and after_good:
        if since > 0 and since <= cfg[S_STEP_LINES] and held < moved:
            return 0, since, held  # back nearer the level before the step: a band ended
        for c in range(levels.shape[0]):
            ref_level[R_BEFORE_STEP, c] = ref_level[R_LEVEL, c]
            ref_level[R_STEP, c] = levels[c]
        return 1, 1, held
    if run > 0 and held >= half and moved < 0.5 * half:
        return run + 1, since, held
    return 0, since, held


@njit(**_OPTS)
def score_line(
    frame,
    row,
    cfg,
    pair_t,
    pair_r,
    scar_ch,
    osc_ch,
    topo_ch,
    family,
    consensus,
    sign2,
    floors,
    state,
    hist,
    scar_grid,
    hist_good,
    base_ring,
    base_sorted,
    base_moves,
    base_med,
    base_scale,
    ref_level,
    ref_row,
    units,
    alive,
    lags,
    lag_votes,
    spec_base,
    fft_tw,
    work,
    iwork,
    raw,
    out,
):
    """Score line `row` of frame (channels, lines, points) against the scan state, and
    advance it. The frame is read in place: frame[c, row] is a contiguous row.

    out <- the feature row (N_FEATURES). Returns nothing; the flag is
    out[F_SCORE] >= cfg[S_FLAG_Z]. Families: two-sided robust z for level, RMS and sharpness,
    one-sided for the rest; the score is the largest clipped family z, or z_clip for a
    dropout line. Flagged and dropout lines never enter the baseline.
    """
    n_ch = frame.shape[0]
    n_pairs = pair_t.shape[0]
    n_raw = raw.shape[0]
    depth = hist.shape[0]
    window = base_ring.shape[0]
    z_clip = cfg[S_Z_CLIP]
    stats = work[0, :16]
    pair_out = work[1, :3]
    levels = work[7, :n_ch]
    slopes = work[10, :n_ch]
    for f in range(out.shape[0]):
        out[f] = 0.0
    head = (state[I_HIST_HEAD] + 1) % depth
    # the reference line's detrended row stays in the history until its slot comes round
    # again (a run of flagged lines); then it moves to ref_row
    if state[I_REF_SLOT] == head:
        for c in range(n_ch):
            ref_row[c, :] = hist[head, c]
        state[I_REF_SLOT] = -1
    ref_slot = state[I_REF_SLOT]
    ready = state[I_BASE_N] >= cfg[S_MIN_BASELINE]
    # no reference level on a scan's first line, nor after a gap (ScanScorer sets the history
    # count to 0): the line before it is not its neighbour
    have_ref = state[I_BASE_N] > 0 and state[I_HIST_N] > 0
    # 1. per-channel statistics and the dropout test. The level is measured as the step from
    # the last unflagged line: a tip change is a new persistent state, so the step stays in
    # view on every line until a line is accepted again, instead of fading into a baseline.
    worst = 0.0
    flat = 0.0
    hist_n = min(state[I_HIST_N] + 1, depth)
    prev = state[I_HIST_HEAD]  # the newest line so far (a dropout line never became it)
    prev2 = (prev - 1) % depth
    # after a dropout run the newest line in the history is not this line's neighbour: the
    # decorrelation and difference against it measure the run's length, not the tip, so they
    # enter as the baseline's median (z 0). The level step stays, held against the last good
    # line: a tip that changed during the run shows in it
    adjacent = hist_n >= 2 and state[I_AFTER_DROPOUT] == 0
    # decorrelation takes the better of the two previous lines, so a single glitch line is
    # not counted again on the line after it
    second = adjacent and hist_n >= 3 and not hist_good[prev]
    # each channel's unit, fixed on its first line with a span (see unit_of); the two
    # channels of a pair share one, since residuals subtract their rows. A channel is alive
    # from its first line with a span on: one that is constant (or not finite) in every line
    # since the scan began (an input left unconnected) stays out of the dropout and pinned
    # tests while another channel lives, or every line of a good scan would be a dropout
    for c in range(n_ch):
        if not alive[c]:
            u = unit_of(frame[c, row])
            alive[c] = u > 0.0
            if units[c] == 0.0:
                units[c] = u
    for p in range(n_pairs):
        u = units[pair_t[p]] if units[pair_t[p]] > 0.0 else units[pair_r[p]]
        units[pair_t[p]] = u
        units[pair_r[p]] = u
    any_alive = False
    for c in range(n_ch):
        any_alive = any_alive or alive[c]
    for c in range(n_ch):
        line_stats(frame[c, row], units[c], hist[prev, c], hist[head, c], stats)
        base = c * N_CH_RAW
        levels[c] = stats[0]
        slopes[c] = stats[1]
        raw[base + CH_LEVEL] = stats[0] - ref_level[R_LEVEL, c] if have_ref else 0.0
        raw[base + CH_RMS] = fast_log(stats[2] + TINY)
        raw[base + CH_SHARP] = fast_log((stats[3] + TINY) / (stats[2] + TINY))
        if alive[c] or not any_alive:
            worst = max(worst, stats[4])
            flat = max(flat, stats[5])
        # 2. line-to-line consistency (measured by line_stats, while the line is in cache)
        corr = stats[6]
        if second:
            corr = max(corr, line_pair(hist[head, c], hist[prev2, c])[0])
        if adjacent:
            raw[base + CH_DECOR] = 1.0 - corr
            raw[base + CH_VDIFF] = fast_log(stats[7] + TINY)
        elif hist_n >= 2:
            raw[base + CH_DECOR] = base_med[base + CH_DECOR]
            raw[base + CH_VDIFF] = base_med[base + CH_VDIFF]
        else:
            raw[base + CH_DECOR] = 0.0
            raw[base + CH_VDIFF] = 0.0
        raw[base + CH_SCAR] = 0.0
    state[I_LINES] += 1
    out[F_DROPOUT] = worst
    dropout = worst >= cfg[S_DROPOUT_FRACTION]
    state[I_AFTER_DROPOUT] = dropout
    if dropout:
        out[F_SCORE] = z_clip
        return
    state[I_HIST_HEAD] = head
    state[I_HIST_N] = hist_n
    # 1b. a level built up over several lines: a tip changes the level at once, and every
    # sample alike; a particle or a terrace under part of the line raises the mean line by
    # line. When no single line's change carries S_ABRUPT of the step from the reference
    # line, the step counts only as far as it moved the whole line: the median of the two
    # lines' raw difference (paired_median), if that is nearer the baseline. An abrupt step
    # counts in full: a tracking loss or a jump from mid-line moves part of the line at once
    for c in range(n_ch):
        lv = c * N_CH_RAW + CH_LEVEL
        climb = max(ref_level[R_CLIMB, c], abs(levels[c] - ref_level[R_PREV, c]))
        ref_level[R_CLIMB, c] = climb
        ref_level[R_PREV, c] = levels[c]
        step = raw[lv]
        if (
            ready
            and have_ref
            and abs(step - base_med[lv]) >= 0.5 * cfg[S_FLAG_Z] * base_scale[lv]
            and climb < cfg[S_ABRUPT] * abs(step)
        ):
            ref_d = hist[ref_slot, c] if ref_slot >= 0 else ref_row[c]
            dslope = slopes[c] - ref_level[R_SLOPE, c]
            robust = step + paired_median(hist[head, c], ref_d, dslope, work[2])
            if abs(robust - base_med[lv]) < abs(step - base_med[lv]):
                raw[lv] = robust
    # scars
    scar_width = 0
    scar_best = 0.0
    step = scar_grid_step(int(cfg[S_SCAR_MIN_LEN]))[0]
    for s in range(scar_ch.shape[0]):
        store_scar_grid(hist[head, scar_ch[s]], scar_grid[head, scar_ch[s]], step)
    if ready:
        for s in range(scar_ch.shape[0]):
            c = scar_ch[s]
            frac, w = scar_fraction(
                hist,
                scar_grid,
                head,
                hist_n,
                c,
                math.exp(base_med[c * N_CH_RAW + CH_VDIFF]),
                cfg[S_SCAR_HARD],
                cfg[S_SCAR_SOFT],
                int(cfg[S_SCAR_MIN_LEN]),
                iwork,
            )
            raw[c * N_CH_RAW + CH_SCAR] = frac
            if frac > scar_best:
                scar_best = frac
                scar_width = w
    out[F_SCAR_FRACTION] = scar_best
    out[F_SCAR_WIDTH] = scar_width
    # 3. trace/retrace residual with the per-scan lag: a full search on the first lines, then
    # every Nth line a narrow re-check around the current lag; the lag is the votes' median
    n_votes_max = lag_votes.shape[0]
    lag_max = int(cfg[S_LAG_MAX])
    searching = state[I_VOTES] < n_votes_max
    if n_pairs > 0 and (searching or state[I_LINES] % int(cfg[S_LAG_EVERY]) == 0):
        slot = state[I_VOTES] % n_votes_max
        reach = lag_max if searching else int(cfg[S_LAG_RECHECK])
        for p in range(n_pairs):
            lo = max(lags[p] - reach, -lag_max) if not searching else -lag_max
            hi = min(lags[p] + reach, lag_max) if not searching else lag_max
            trace, retrace = hist[head, pair_t[p]], hist[head, pair_r[p]]
            lag_votes[slot, p] = best_lag(trace, retrace, lo, hi, work[8])
        state[I_VOTES] += 1
        n_votes = min(state[I_VOTES], n_votes_max)
        for p in range(n_pairs):
            lags[p] = _median_int(lag_votes[:, p], n_votes, iwork)
    off = n_ch * N_CH_RAW
    for p in range(n_pairs):
        residual(hist[head, pair_t[p]], hist[head, pair_r[p]], lags[p], pair_out)
        raw[off + p * N_PAIR_RAW + PR_RMS] = fast_log(pair_out[0] + TINY)
        raw[off + p * N_PAIR_RAW + PR_MAX] = fast_log(pair_out[1] + TINY)
        raw[off + p * N_PAIR_RAW + PR_DECOR] = 1.0 - pair_out[2]
    # 4. ringing: spectral peak of the oscillation channel over its running spectrum, and
    # the peak that persisted at one frequency over the last lines (raw[-1], see step 5)
    ring_i = n_raw - 2
    raw[ring_i] = 0.0
    raw[ring_i + 1] = 0.0
    m = fft_tw.shape[1]
    if osc_ch >= 0 and m >= 8:
        power = work[3, :m]
        logp = work[4, :m]
        power_spectrum(hist[head, osc_ch], fft_tw, work[8], work[9], power)
        have_spec = state[I_SPEC_N] > 0
        klo = int(cfg[S_SPEC_KLO])
        raw[ring_i] = spectral_peak(power, spec_base[0], klo, have_spec, logp)
        if have_spec:
            # work rows 2 (free) and 3 (power, spent by now) as scratch
            raw[ring_i + 1] = persistent_peak(logp, spec_base, klo, work[2:4])
    # 5. robust z per family (the consensus-th largest over channels), score and flag
    top1 = work[5, :N_FAMILIES]
    top2 = work[6, :N_FAMILIES]
    for f in range(N_FAMILIES):
        top1[f] = 0.0
        top2[f] = 0.0
    if ready:
        for i in range(n_raw):
            z = (raw[i] - base_med[i]) / base_scale[i]
            if sign2[i]:
                z = abs(z)
            z = min(max(z, 0.0), z_clip)
            fam = family[i]
            if fam < 0:
                continue
            # the two largest so far without a branch on z (those mispredicted: the order
            # of the channels' z is random)
            first = top1[fam]
            top1[fam] = max(first, z)
            top2[fam] = max(top2[fam], min(first, z))
        for f in range(N_FAMILIES - 1):
            out[f] = top2[f] if consensus[f] >= 2 else top1[f]
    if flat >= cfg[S_SAT_FRACTION]:
        out[F_RMS] = z_clip  # a pinned segment: the tip lost the surface (tracking loss)
    # the persistent spectral peak (last raw value, no family) flags ringing on its own: it
    # raises the score but not the ringing_z column, so a line it flags is named oscillation
    # by the score alone, and lines flagged by other families keep their kinds
    persist = ring_i + 1
    ring_z = 0.0
    if ready:
        ring_z = (raw[persist] - base_med[persist]) / base_scale[persist]
        ring_z = min(max(ring_z, 0.0), z_clip)
    score = ring_z
    for f in range(N_FAMILIES - 1):
        score = max(score, out[f])
    out[F_SCORE] = score
    ring_z = max(ring_z, out[F_RING])
    # a peak that also stands out of the topography's spectrum, at >= S_TOPO_KMIN cycles per
    # line (slower content is topography), is a loop ringing, not content of the error
    # channel alone: it scores S_TOPO_BOOST more, and stays out of the ringing baseline
    confirmed = False
    if ring_z >= 0.5 * cfg[S_FLAG_Z] and topo_ch >= 0 and osc_ch >= 0 and m >= 8:
        klo = int(cfg[S_SPEC_KLO])
        k = peak_bin(work[4, :m], spec_base[0], klo)
        topo = work[4, :m]  # the watched channel is the topography: its spectrum is there
        if topo_ch != osc_ch:
            topo = work[2, :m]
            power_spectrum(hist[head, topo_ch], fft_tw, work[8], work[9], work[3, :m])
            spectral_peak(work[3, :m], spec_base[0], klo, False, topo)
        confirmed = k >= cfg[S_TOPO_KMIN] and local_contrast(topo, k, klo) >= cfg[S_TOPO_CONTRAST]
    if confirmed:
        ring_z += cfg[S_TOPO_BOOST]
        score = max(score, ring_z)
        out[F_SCORE] = score
    # 5b. a level step below the flag threshold that persists (see _held_step)
    calm = out[F_LEVEL] < 0.5 * cfg[S_FLAG_Z]
    run = 0
    since = 0
    held = 0.0
    if ready and have_ref:
        run, since, held = _held_step(
            levels,
            ref_level,
            base_med,
            base_scale,
            consensus[F_LEVEL],
            cfg,
            calm,
            hist_good[prev],
            state[I_STEP_RUN],
            state[I_STEP_SINCE],
        )
    state[I_STEP_RUN] = run
    state[I_STEP_SINCE] = since
    # a line the level flags on its own keeps its z: the boost brings a held step to the flag,
    # it does not raise a flagged one's severity (and with it the responder's action)
    step_held = run >= cfg[S_STEP_LINES] and out[F_LEVEL] < cfg[S_FLAG_Z]
    if step_held:
        out[F_LEVEL] = min(held + cfg[S_TOPO_BOOST], z_clip)
        score = max(score, out[F_LEVEL])
        out[F_SCORE] = score
    flagged = score >= cfg[S_FLAG_Z]
    hist_good[head] = not flagged
    # 6. advance the baseline; a flagged line enters clipped to med +- S_CLIP scale, so a
    # fault moves the baseline only slowly (it does not become the new normal at once) while
    # a genuine change of the sample is absorbed within about half a window. The level step
    # of a flagged line enters as the median: the step is held against the last good line, so
    # letting it widen the jitter scale would fade a persistent tip change within a few lines
    bh = state[I_BASE_HEAD]
    clip = cfg[S_CLIP]
    # a confirmed ringing line leaves the ringing measures' slot as it was (the median while
    # the ring fills): entering, even clipped, it raised their median within ~10 lines and a
    # weak persistent ringing faded before it alerted
    entered = ring_i if confirmed else n_raw
    # the slot's values move into the sorted window too: one pass for the whole window (see
    # window_replace), the median/MAD read from it below
    leaving = base_moves[0]
    entering = base_moves[1]
    for i in range(n_raw):
        leaving[i] = base_ring[bh, i]
    for i in range(entered):
        v = raw[i]
        if v != v:  # no NaN in the sorted window: one could never leave it again
            v = base_med[i]
        elif flagged and family[i] == F_LEVEL:
            v = base_med[i]  # a held step is no sample of the line-to-line jitter
        elif flagged:
            v = min(max(v, base_med[i] - clip * base_scale[i]), base_med[i] + clip * base_scale[i])
        base_ring[bh, i] = v
    if state[I_BASE_N] < window:
        for i in range(entered, n_raw):
            base_ring[bh, i] = base_med[i]
    for i in range(n_raw):
        entering[i] = base_ring[bh, i]
    window_replace(base_sorted, state[I_BASE_N], leaving, entering, base_moves[2])
    # the reference level also follows a line flagged for ringing whose own level is calm
    # (z < half the flag threshold): a long ringing run would otherwise hold the reference
    # while the sample's level drifts, and end in a false tip change
    ringing_only = ring_z >= cfg[S_FLAG_Z] and out[F_LEVEL] < 0.5 * cfg[S_FLAG_Z]
    # a calm line flagged for a held step is level with the step: the reference follows it
    if not flagged or ringing_only or (step_held and calm) or not have_ref:
        for c in range(n_ch):
            ref_level[R_LEVEL, c] = levels[c]
            ref_level[R_SLOPE, c] = slopes[c]
            ref_level[R_CLIMB, c] = 0.0
        state[I_REF_SLOT] = head
    state[I_BASE_HEAD] = (bh + 1) % window
    state[I_BASE_N] = min(state[I_BASE_N] + 1, window)
    state[I_SINCE_REFRESH] += 1
    # the running spectrum learns only from lines without a ringing hint, so a growing
    # oscillation is not absorbed before it is flagged
    if not flagged and ring_z < 0.5 * cfg[S_FLAG_Z] and osc_ch >= 0 and m >= 8:
        logp = work[4, :m]
        alpha = cfg[S_SPEC_ALPHA] if state[I_SPEC_N] > 0 else 1.0
        base = spec_base[0]
        for k in range(int(cfg[S_SPEC_KLO]), m - 1):
            base[k] += alpha * (logp[k] - base[k])
        state[I_SPEC_N] += 1
    if state[I_BASE_N] < window or state[I_SINCE_REFRESH] >= cfg[S_REFRESH]:
        n_base = state[I_BASE_N]
        window_median_mad(base_sorted, n_base, floors, base_med, base_scale, base_moves[2:5])
        # a level step is judged against the line-to-line jitter of the level, floored by a
        # share of the channel's own line-to-line difference RMS (smooth data has no jitter)
        for c in range(n_ch):
            lv = c * N_CH_RAW + CH_LEVEL
            vd = c * N_CH_RAW + CH_VDIFF
            base_scale[lv] = max(base_scale[lv], cfg[S_LEVEL_FLOOR] * math.exp(base_med[vd]))
        state[I_SINCE_REFRESH] = 0


@njit(**_OPTS)
def score_frame(frame, rows, start, *scan):
    """score_line over the lines frame[:, rows[k]] (k in acquisition order) into out[start +
    k]; frame is (channels, lines, points), C-contiguous (ScanScorer gives float32); `scan`
    is score_line's arguments after the row (cfg ... raw) followed by out.

    The one entry point for live lines (a frame of one) and saved frames alike, so both run
    the same machine code and give bit-identical rows. A saved frame is read where it lies
    (.ibw data: float32): no copy of it is made, each line comes from memory once (into
    line_stats), and the next line is on its way meanwhile.
    """
    state, out = scan[:-1], scan[-1]
    per_cache_line = max(64 // frame.itemsize, 1)
    for k in range(rows.shape[0]):
        if k + 1 < rows.shape[0]:
            # the next line from memory while this one is scored: in a saved frame each line
            # is new to the cache, and reading it cold cost ~1.4 us of its ~10
            for c in range(frame.shape[0]):
                nxt = frame[c, rows[k + 1]]
                for i in range(0, nxt.shape[0], per_cache_line):
                    _prefetch(nxt, i)
        score_line(frame, rows[k], *state, out[start + k])
