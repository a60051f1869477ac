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
from numba import njit

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
) = range(17)
N_SETTINGS = 17

# Integer state vector.
I_LINES, I_HIST_N, I_HIST_HEAD, I_BASE_N, I_BASE_HEAD, I_SINCE_REFRESH, I_VOTES, I_SPEC_N = range(8)
N_STATE = 8

SCAR_MAX_WIDTH = 4
HIST_DEPTH = SCAR_MAX_WIDTH + 2  # band of 4 + the older neighbour + the newest line
TINY = 1e-300

_OPTS = {"cache": True, "nogil": True, "fastmath": False, "error_model": "numpy"}


@njit(**_OPTS)
def line_stats(x, out_detrended, stats):
    """Detrend one line (offset + slope by least squares) and measure it.

    stats <- [level, slope, rms, diff_rms, bad_fraction]; bad_fraction is the largest share of
    non-finite, exactly zero, or saturated samples (equal to the line max or min), 1.0 when the
    line is constant. Non-finite samples are written as 0 in `out_detrended`.
    """
    n = x.shape[0]
    half = 0.5 * (n - 1)
    s = 0.0
    sx = 0.0
    sxx = 0.0
    good = 0
    zeros = 0
    lo = np.inf
    hi = -np.inf
    for i in range(n):
        v = x[i]
        if not math.isfinite(v):
            continue
        xc = i - half
        good += 1
        s += v
        sx += v * xc
        sxx += xc * xc
        if v == 0.0:
            zeros += 1
        lo = min(lo, v)
        hi = max(hi, v)
    nonfinite = n - good
    if good < 2 or hi == lo:
        for i in range(n):
            out_detrended[i] = 0.0
        stats[0] = s / good if good > 0 else 0.0
        stats[1] = 0.0
        stats[2] = 0.0
        stats[3] = 0.0
        stats[4] = 1.0
        return
    mean = s / good
    slope = sx / sxx if sxx > 0.0 else 0.0
    n_hi = 0
    n_lo = 0
    ss = 0.0
    sd = 0.0
    last = 0.0
    for i in range(n):
        v = x[i]
        if not math.isfinite(v):
            out_detrended[i] = 0.0
            continue
        if v == hi:
            n_hi += 1
        if v == lo:
            n_lo += 1
        d = v - mean - slope * (i - half)
        out_detrended[i] = d
        ss += d * d
        if i > 0:
            sd += (d - last) * (d - last)
        last = d
    worst = max(nonfinite, zeros, n_hi, n_lo)
    stats[0] = mean
    stats[1] = slope
    stats[2] = math.sqrt(ss / n)
    stats[3] = math.sqrt(sd / (n - 1))
    stats[4] = worst / n


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
    drift apart slightly). out <- [rms, max |residual|, trace/retrace correlation].
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
    half = 0.5 * (m - 1)
    s = 0.0
    sx = 0.0
    sxx = 0.0
    stt = 0.0
    srr = 0.0
    str_ = 0.0
    for i in range(i0, i1):
        t = trace[i + lag]
        r = retrace[i]
        d = t - r
        xc = (i - i0) - half
        s += d
        sx += d * xc
        sxx += xc * xc
        stt += t * t
        srr += r * r
        str_ += t * r
    mean = s / m
    slope = sx / sxx
    ss = 0.0
    mx = 0.0
    for i in range(i0, i1):
        d = trace[i + lag] - retrace[i] - mean - slope * ((i - i0) - half)
        ss += d * d
        mx = max(mx, abs(d))
    denom = math.sqrt(stt * srr)
    out[0] = math.sqrt(ss / m)
    out[1] = mx
    out[2] = str_ / denom if denom > 0.0 else 0.0


@njit(**_OPTS)
def best_lag(trace, retrace, max_lag, work):
    """The shift (|lag| <= max_lag) minimising the residual RMS of one line pair."""
    best = 0
    best_rms = np.inf
    for lag in range(-max_lag, max_lag + 1):
        residual(trace, retrace, lag, work)
        if work[0] < best_rms:
            best_rms = work[0]
            best = lag
    return best


@njit(**_OPTS)
def scar_fraction(hist, head, count, ch, scale, hard, soft, min_len, bmin, bmax):
    """Causal scar score: share of the previous lines' pixels inside a confirmed scar band.

    `hist[head]` is the newest line (just arrived). A band is 1-4 lines just before it; a
    pixel belongs to a scar when the whole band sits above (or below) both neighbours, the
    newest line and the line before the band, by `soft * scale`, in a run of at least
    `min_len` px that reaches `hard * scale` somewhere. Returns (fraction, band width);
    the band is confirmed only now, so its flag is delayed by 1-4 lines. `bmin`/`bmax` are
    scratch rows holding the band's running min/max as the band widens.
    """
    depth = hist.shape[0]
    n = hist.shape[2]
    best = 0.0
    best_w = 0
    if scale <= 0.0:
        return best, best_w
    hard_t = hard * scale
    soft_t = soft * scale
    newest = hist[head, ch]
    for w in range(1, SCAR_MAX_WIDTH + 1):
        if count < w + 2:
            break
        added = hist[(head - w) % depth, ch]
        old = hist[(head - w - 1) % depth, ch]
        marked = 0
        run_p = 0
        hit_p = False
        run_n = 0
        hit_n = False
        for i in range(n + 1):
            e_pos = -np.inf
            e_neg = -np.inf
            if i < n:
                v = added[i]
                if w == 1:
                    bmin[i] = v
                    bmax[i] = v
                else:
                    bmin[i] = min(bmin[i], v)
                    bmax[i] = max(bmax[i], v)
                a = newest[i]
                b = old[i]
                e_pos = bmin[i] - max(a, b)
                e_neg = min(a, b) - bmax[i]
            if e_pos >= soft_t:
                run_p += 1
                hit_p = hit_p or e_pos >= hard_t
            else:
                if run_p >= min_len and hit_p:
                    marked += run_p
                run_p = 0
                hit_p = False
            if e_neg >= soft_t:
                run_n += 1
                hit_n = hit_n or e_neg >= hard_t
            else:
                if run_n >= min_len and hit_n:
                    marked += run_n
                run_n = 0
                hit_n = False
        frac = marked / n
        if frac > best:
            best = frac
            best_w = w
    return best, best_w


@njit(**_OPTS)
def power_spectrum(x, bitrev, tw_re, tw_im, z_re, z_im, power):
    """Power of the real DFT of x[:2M] at bins 0..M-1 (M = len(bitrev), a power of two).

    Packs the real samples into M complex ones, runs an in-place radix-2 FFT, then unpacks
    the even/odd halves: half the work of a complex FFT of 2M points.
    """
    m = bitrev.shape[0]
    for k in range(m):
        j = bitrev[k]
        z_re[k] = x[2 * j]
        z_im[k] = x[2 * j + 1]
    size = 2
    while size <= m:
        halfsize = size // 2
        step = m // size
        for start in range(0, m, size):
            for k in range(halfsize):
                wr = tw_re[k * step * 2]
                wi = tw_im[k * step * 2]
                a = start + k
                b = a + halfsize
                tr = z_re[b] * wr - z_im[b] * wi
                ti = z_re[b] * wi + z_im[b] * wr
                z_re[b] = z_re[a] - tr
                z_im[b] = z_im[a] - ti
                z_re[a] += tr
                z_im[a] += ti
        size *= 2
    for k in range(m):
        c = (m - k) % m
        er = 0.5 * (z_re[k] + z_re[c])
        ei = 0.5 * (z_im[k] - z_im[c])
        orr = 0.5 * (z_im[k] + z_im[c])
        oi = -0.5 * (z_re[k] - z_re[c])
        wr = tw_re[k]
        wi = tw_im[k]
        xr = er + wr * orr - wi * oi
        xi = ei + wr * oi + wi * orr
        power[k] = xr * xr + xi * xi


@njit(**_OPTS)
def spectral_peak(power, base, klo, have_base, log_out):
    """Largest excess of log power (two adjacent bins pooled) over the running baseline.

    Writes the pooled log power into `log_out` for the caller's baseline update.
    """
    m = power.shape[0]
    peak = 0.0
    for k in range(klo, m - 1):
        v = math.log(power[k] + power[k + 1] + TINY)
        log_out[k] = v
        if have_base and v - base[k] > peak:
            peak = v - base[k]
    return peak


@njit(**_OPTS)
def _sorted_copy(src, count, dst):
    """Insertion sort of src[:count] into dst[:count] (no allocation)."""
    for i in range(count):
        v = src[i]
        j = i - 1
        while j >= 0 and dst[j] > v:
            dst[j + 1] = dst[j]
            j -= 1
        dst[j + 1] = v


@njit(**_OPTS)
def _median_sorted(a, count):
    mid = count // 2
    if count % 2:
        return a[mid]
    return 0.5 * (a[mid - 1] + a[mid])


@njit(**_OPTS)
def robust_baseline(ring, count, floors, med, scale, col, buf_a, buf_b):
    """Median and MAD scale of each column of ring[:count].

    scale = max(1.4826 MAD, floor): the floor keeps a feature that is nearly constant on good
    lines (a scar share of 0, the log RMS of a flat substrate) from turning noise into huge z.
    """
    n_feat = ring.shape[1]
    for f in range(n_feat):
        for i in range(count):
            col[i] = ring[i, f]
        _sorted_copy(col, count, buf_a)
        m = _median_sorted(buf_a, count)
        for i in range(count):
            col[i] = abs(ring[i, f] - m)
        _sorted_copy(col, count, buf_b)
        mad = _median_sorted(buf_b, count)
        med[f] = m
        scale[f] = max(1.4826 * mad, floors[f])


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
def score_line(
    data,
    cfg,
    pair_t,
    pair_r,
    scar_ch,
    osc_ch,
    family,
    consensus,
    sign2,
    floors,
    state,
    hist,
    hist_good,
    base_ring,
    base_med,
    base_scale,
    lags,
    lag_votes,
    spec_base,
    fft_bitrev,
    fft_tw_re,
    fft_tw_im,
    work,
    iwork,
    raw,
    out,
):
    """Score one line (data: (channels, points)) against the scan state, and advance it.

    out <- the feature row (N_FEATURES). Returns nothing; the flag is
    out[F_SCORE] >= cfg[S_FLAG_Z]. Families: two-sided robust z for level, RMS and sharpness,
    one-sided for the rest; the score is the largest clipped family z, or z_clip for a
    dropout line. Flagged and dropout lines never enter the baseline.
    """
    n_ch = data.shape[0]
    n_pairs = pair_t.shape[0]
    n_raw = raw.shape[0]
    depth = hist.shape[0]
    window = base_ring.shape[0]
    z_clip = cfg[S_Z_CLIP]
    stats = work[0, :5]
    pair_out = work[1, :3]
    for f in range(out.shape[0]):
        out[f] = 0.0
    head = (state[I_HIST_HEAD] + 1) % depth
    # 1. per-channel statistics and the dropout test
    worst = 0.0
    for c in range(n_ch):
        line_stats(data[c], hist[head, c], stats)
        base = c * N_CH_RAW
        raw[base + CH_LEVEL] = stats[0]
        raw[base + CH_RMS] = math.log(stats[2] + TINY)
        raw[base + CH_SHARP] = stats[3] / stats[2] if stats[2] > 0.0 else 0.0
        worst = max(worst, stats[4])
    state[I_LINES] += 1
    out[F_DROPOUT] = worst
    if worst >= cfg[S_DROPOUT_FRACTION]:
        out[F_SCORE] = z_clip
        return
    hist_n = min(state[I_HIST_N] + 1, depth)
    state[I_HIST_HEAD] = head
    state[I_HIST_N] = hist_n
    prev = (head - 1) % depth
    ready = state[I_BASE_N] >= cfg[S_MIN_BASELINE]
    # 2. line-to-line consistency and scars. Decorrelation takes the better of the two
    # previous lines, so a single glitch line is not counted again on the line after it.
    prev2 = (head - 2) % depth
    for c in range(n_ch):
        base = c * N_CH_RAW
        if hist_n >= 2:
            corr, vd = line_pair(hist[head, c], hist[prev, c])
            if hist_n >= 3 and not hist_good[prev]:
                corr = max(corr, line_pair(hist[head, c], hist[prev2, c])[0])
            raw[base + CH_DECOR] = 1.0 - corr
            raw[base + CH_VDIFF] = math.log(vd + TINY)
        else:
            raw[base + CH_DECOR] = 0.0
            raw[base + CH_VDIFF] = 0.0
        raw[base + CH_SCAR] = 0.0
    scar_width = 0
    scar_best = 0.0
    if ready:
        for s in range(scar_ch.shape[0]):
            c = scar_ch[s]
            frac, w = scar_fraction(
                hist,
                head,
                hist_n,
                c,
                math.exp(base_med[c * N_CH_RAW + CH_VDIFF]),
                cfg[S_SCAR_HARD],
                cfg[S_SCAR_SOFT],
                int(cfg[S_SCAR_MIN_LEN]),
                work[5],
                work[6],
            )
            raw[c * N_CH_RAW + CH_SCAR] = frac
            if frac > scar_best:
                scar_best = frac
                scar_width = w
    out[F_SCAR_FRACTION] = scar_best
    out[F_SCAR_WIDTH] = scar_width
    # 3. trace/retrace residual with the per-scan lag (votes: first lines, then every Nth)
    n_votes_max = lag_votes.shape[0]
    vote = state[I_VOTES] < n_votes_max or state[I_LINES] % int(cfg[S_LAG_EVERY]) == 0
    if vote and n_pairs > 0:
        slot = state[I_VOTES] % n_votes_max
        for p in range(n_pairs):
            lag_votes[slot, p] = best_lag(
                hist[head, pair_t[p]], hist[head, pair_r[p]], int(cfg[S_LAG_MAX]), pair_out
            )
        state[I_VOTES] += 1
        n_votes = min(state[I_VOTES], n_votes_max)
        for p in range(n_pairs):
            lags[p] = _median_int(lag_votes[:, p], n_votes, iwork)
    off = n_ch * N_CH_RAW
    for p in range(n_pairs):
        residual(hist[head, pair_t[p]], hist[head, pair_r[p]], lags[p], pair_out)
        raw[off + p * N_PAIR_RAW + PR_RMS] = math.log(pair_out[0] + TINY)
        raw[off + p * N_PAIR_RAW + PR_MAX] = math.log(pair_out[1] + TINY)
        raw[off + p * N_PAIR_RAW + PR_DECOR] = 1.0 - pair_out[2]
    # 4. ringing: spectral peak of the oscillation channel over its running spectrum
    ring_i = n_raw - 1
    raw[ring_i] = 0.0
    m = fft_bitrev.shape[0]
    if osc_ch >= 0 and m >= 8:
        power = work[3, :m]
        logp = work[4, :m]
        power_spectrum(
            hist[head, osc_ch], fft_bitrev, fft_tw_re, fft_tw_im, work[8, :m], work[9, :m], power
        )
        raw[ring_i] = spectral_peak(
            power,
            spec_base,
            int(cfg[S_SPEC_KLO]),
            state[I_SPEC_N] > 0,
            logp,
        )
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
            if z > top1[fam]:
                top2[fam] = top1[fam]
                top1[fam] = z
            elif z > top2[fam]:
                top2[fam] = z
        for f in range(N_FAMILIES - 1):
            out[f] = top2[f] if consensus[f] >= 2 else top1[f]
    score = 0.0
    for f in range(N_FAMILIES - 1):
        score = max(score, out[f])
    out[F_SCORE] = score
    flagged = score >= cfg[S_FLAG_Z]
    hist_good[head] = not flagged
    # 6. advance the baseline; a flagged line enters clipped to med +- S_CLIP scale, so a
    # fault moves the baseline only slowly (it does not become the new normal at once) while
    # a genuine change of the sample is absorbed within about half a window
    bh = state[I_BASE_HEAD]
    clip = cfg[S_CLIP]
    for i in range(n_raw):
        v = raw[i]
        if flagged:
            v = min(max(v, base_med[i] - clip * base_scale[i]), base_med[i] + clip * base_scale[i])
        base_ring[bh, i] = v
    state[I_BASE_HEAD] = (bh + 1) % window
    state[I_BASE_N] = min(state[I_BASE_N] + 1, window)
    state[I_SINCE_REFRESH] += 1
    # the running spectrum learns only from lines without a ringing hint, so a growing
    # oscillation is not absorbed before it is flagged
    if not flagged and out[F_RING] < 0.5 * cfg[S_FLAG_Z] and osc_ch >= 0 and m >= 8:
        logp = work[4, :m]
        alpha = cfg[S_SPEC_ALPHA] if state[I_SPEC_N] > 0 else 1.0
        for k in range(int(cfg[S_SPEC_KLO]), m - 1):
            spec_base[k] += alpha * (logp[k] - spec_base[k])
        state[I_SPEC_N] += 1
    if state[I_BASE_N] < window or state[I_SINCE_REFRESH] >= cfg[S_REFRESH]:
        n_base = state[I_BASE_N]
        robust_baseline(
            base_ring,
            n_base,
            floors,
            base_med,
            base_scale,
            work[5, :n_base],
            work[6, :n_base],
            work[7, :n_base],
        )
        # a level step is judged against the line's own roughness as well as level drift
        for c in range(n_ch):
            lv = c * N_CH_RAW + CH_LEVEL
            rm = c * N_CH_RAW + CH_RMS
            base_scale[lv] = max(base_scale[lv], cfg[S_LEVEL_FLOOR] * math.exp(base_med[rm]))
        state[I_SINCE_REFRESH] = 0


@njit(**_OPTS)
def score_frame(
    frame,
    cfg,
    pair_t,
    pair_r,
    scar_ch,
    osc_ch,
    family,
    consensus,
    sign2,
    floors,
    state,
    hist,
    hist_good,
    base_ring,
    base_med,
    base_scale,
    lags,
    lag_votes,
    spec_base,
    fft_bitrev,
    fft_tw_re,
    fft_tw_im,
    work,
    iwork,
    raw,
    out,
):
    """score_line over frame[k] (k in acquisition order); out: (lines, N_FEATURES)."""
    for k in range(frame.shape[0]):
        score_line(
            frame[k],
            cfg,
            pair_t,
            pair_r,
            scar_ch,
            osc_ch,
            family,
            consensus,
            sign2,
            floors,
            state,
            hist,
            hist_good,
            base_ring,
            base_med,
            base_scale,
            lags,
            lag_votes,
            spec_base,
            fft_bitrev,
            fft_tw_re,
            fft_tw_im,
            work,
            iwork,
            raw,
            out[k],
        )
