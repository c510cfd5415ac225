/* Fused float32 block kernels: what the numpy path does in several passes over a block,
 * done in one pass while the block is in cache.
 *
 * Optional: weightcli/native.py imports this module when it was built and falls back to
 * numpy when it was not (or when WEIGHTCLI_NATIVE=0). Every kernel returns None for a
 * block it does not take (NaN/Inf in it, or a result that would overflow), and the
 * caller then runs the numpy path on that block, so the two paths agree by construction
 * on every hard case; tests check the two against each other and against numpy.
 *
 * Built without -ffast-math and with -ffp-contract=off: every floating-point operation
 * is the IEEE one numpy performs, in the same order where the result must be bit-equal
 * (fake_quant_f32 writes the same bytes as transforms/quantize.py's numpy path). Sums
 * are accumulated in double in LANES independent lanes, so the compiler can vectorise
 * them without reassociating anything.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Compiled for AVX-512, AVX2 and baseline x86-64; the loader picks the best one this CPU
 * runs (GCC's function multiversioning). */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* A C-contiguous float32 (format "f") or float64 ("d") buffer in the host's byte order,
 * or an error. */
static int get_buffer(PyObject *obj, Py_buffer *view, const char *fmt, int writable) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT |
                                          (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    const char *f = view->format;
    /* numpy names an explicitly little-endian dtype (h5py's '<f4') "<f": the same bytes
     * on a little-endian host; a big-endian one is refused (weightcli/native.py never
     * passes one). */
#if PY_LITTLE_ENDIAN
    if (f != NULL && (f[0] == '<' || f[0] == '=' || f[0] == '@'))
        f++;
#else
    if (f != NULL && (f[0] == '=' || f[0] == '@'))
        f++;
#endif
    if (f == NULL || strcmp(f, fmt) != 0) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_TypeError, "expected a buffer of format '%s'", fmt);
        return -1;
    }
    return 0;
}

/* Two float32 buffers of one size (x, and y writable or not), or an error with neither
 * held. */
static int get_two_f32(PyObject *xo, PyObject *yo, Py_buffer *xb, Py_buffer *yb,
                       int y_writable) {
    if (get_buffer(xo, xb, "f", 0) < 0)
        return -1;
    if (get_buffer(yo, yb, "f", y_writable) < 0) {
        PyBuffer_Release(xb);
        return -1;
    }
    if (yb->len != xb->len) {
        PyBuffer_Release(xb);
        PyBuffer_Release(yb);
        PyErr_SetString(PyExc_ValueError, "the two blocks differ in size");
        return -1;
    }
    return 0;
}

typedef struct {
    float lo, hi;
    double sum, sumsq, m2;
    Py_ssize_t zeros;
} moments;

/* Sums run in W float32 lanes over chunks of CHUNK elements (W * 64 terms: a lane's
 * rounding error stays near 64 ulp, below numpy's pairwise sum over a block), and the
 * chunks' sums add up in double. Eight times faster than double lanes here. */
#define W 16
#define CHUNK 1024

/* Magnitudes whose float32 squares neither overflow nor lose precision to underflow
 * (stats.py's FLOAT32_SAFE); a block outside them sums squares in double. */
#define SAFE_LO 1e-15
#define SAFE_HI 1e15

static void moments_init(moments *m) {
    m->lo = INFINITY;
    m->hi = -INFINITY;
    m->sum = m->sumsq = m->m2 = 0.0;
    m->zeros = 0;
}

/* Adds x[0:n] to m's extremes, sums and zeros. */
VECTOR_CLONES
static void sums_add(const float *x, Py_ssize_t n, moments *m) {
    float lo[W], hi[W];
    double sum = 0.0, sumsq = 0.0;
    Py_ssize_t zeros = 0;
    for (int j = 0; j < W; j++) {
        lo[j] = INFINITY;
        hi[j] = -INFINITY;
    }
    Py_ssize_t i = 0;
    for (Py_ssize_t c = 0; c + W <= n; c += CHUNK) {
        float s[W], q[W];
        int z[W];
        for (int j = 0; j < W; j++) {
            s[j] = q[j] = 0.0f;
            z[j] = 0;
        }
        Py_ssize_t end = c + CHUNK < n ? c + CHUNK : n;
        for (i = c; i + W <= end; i += W)
            for (int j = 0; j < W; j++) {
                float v = x[i + j];
                lo[j] = v < lo[j] ? v : lo[j];
                hi[j] = v > hi[j] ? v : hi[j];
                s[j] += v;
                q[j] += v * v;
                z[j] += (v == 0.0f);
            }
        for (int j = 0; j < W; j++) {
            sum += s[j];
            sumsq += q[j];
            zeros += z[j];
        }
    }
    for (; i < n; i++) {
        float v = x[i];
        lo[0] = v < lo[0] ? v : lo[0];
        hi[0] = v > hi[0] ? v : hi[0];
        sum += v;
        sumsq += (double)v * v;
        zeros += (v == 0.0f);
    }
    for (int j = 0; j < W; j++) {
        m->lo = lo[j] < m->lo ? lo[j] : m->lo;
        m->hi = hi[j] > m->hi ? hi[j] : m->hi;
    }
    m->sum += sum;
    m->sumsq += sumsq;
    m->zeros += zeros;
}

static void sums_f32(const float *x, Py_ssize_t n, moments *m) {
    moments_init(m);
    sums_add(x, n, m);
}

/* The sum of squared deviations from ``mean``, in double (the rare cases: the mean
 * dominates, or magnitudes outside SAFE_LO..SAFE_HI). */
static double deviations_f64(const float *x, Py_ssize_t n, double mean) {
    double d2[4] = {0.0, 0.0, 0.0, 0.0};
    Py_ssize_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++) {
            double d = (double)x[i + j] - mean;
            d2[j] += d * d;
        }
    for (; i < n; i++) {
        double d = (double)x[i] - mean;
        d2[0] += d * d;
    }
    return d2[0] + d2[1] + d2[2] + d2[3];
}

/* min, max, mean's sum, m2 and zeros of x[0:n]; returns 0 when something is not finite
 * (NaN or Inf make the sums non-finite). */
static int moments_finish(const float *x, Py_ssize_t n, moments *m);

static int moments_f32(const float *x, Py_ssize_t n, moments *m) {
    sums_f32(x, n, m);
    return moments_finish(x, n, m);
}

/* m2 from the sums that sums_add gathered over all of x[0:n] (or, where they would
 * cancel, from the deviations); 0 when something is not finite. */
static int moments_finish(const float *x, Py_ssize_t n, moments *m) {
    if (!isfinite(m->sum) || !isfinite(m->lo) || !isfinite(m->hi))
        return 0;
    double amax = fmax(-(double)m->lo, (double)m->hi);
    double mean = m->sum / (double)n;
    if (!(amax == 0.0 || (SAFE_LO < amax && amax < SAFE_HI))) {
        double s = 0.0;
        for (Py_ssize_t i = 0; i < n; i++)
            s += x[i];
        mean = s / (double)n;
        m->sum = s;
        m->m2 = deviations_f64(x, n, mean);
        return 1;
    }
    /* From the two sums, or (where the mean dominates and they would cancel) from the
     * deviations, while the block is in cache. */
    double m2 = m->sumsq - (double)n * mean * mean;
    if (mean * mean > 1e-2 * (m->sumsq / (double)n) || m2 < 0)
        m2 = deviations_f64(x, n, mean);
    m->m2 = m2;
    return 1;
}

PyDoc_STRVAR(stats_doc,
             "stats_f32(x) -> (n, mean, m2, min, max, zeros) or None\n\n"
             "Moments of a C-contiguous float32 buffer; None when it holds NaN/Inf.");

static PyObject *stats_f32(PyObject *self, PyObject *args) {
    PyObject *xo;
    if (!PyArg_ParseTuple(args, "O", &xo))
        return NULL;
    Py_buffer xb;
    if (get_buffer(xo, &xb, "f", 0) < 0)
        return NULL;
    Py_ssize_t n = xb.len / (Py_ssize_t)sizeof(float);
    moments m;
    int ok = 0;
    if (n > 0) {
        Py_BEGIN_ALLOW_THREADS;
        ok = moments_f32((const float *)xb.buf, n, &m);
        Py_END_ALLOW_THREADS;
    }
    PyBuffer_Release(&xb);
    if (!ok)
        Py_RETURN_NONE;
    return Py_BuildValue("(nddddn)", n, m.sum / (double)n, m.m2, (double)m.lo, (double)m.hi,
                         m.zeros);
}

PyDoc_STRVAR(pair_doc,
             "pair_f32(x, y) -> (x_moments, y_moments, changed, max_abs_change) or None\n\n"
             "Both sides' moments (mean, m2, min, max, zeros) and how many elements differ and by\n"
             "how much at most (|y - x| in float32, as numpy's subtract gives it); None when\n"
             "either side holds NaN/Inf or a difference overflows float32.");

typedef struct {
    Py_ssize_t changed;
    float worst;
} changes;

/* Adds x[0:n] -> y[0:n] to c's count of changed elements and largest change. */
VECTOR_CLONES
static void changes_add(const float *restrict x, const float *restrict y, Py_ssize_t n,
                        changes *c) {
    float w[W];
    Py_ssize_t changed = 0;
    for (int j = 0; j < W; j++)
        w[j] = 0.0f;
    Py_ssize_t i = 0;
    for (Py_ssize_t s = 0; s + W <= n; s += CHUNK) {
        int k[W];
        for (int j = 0; j < W; j++)
            k[j] = 0;
        Py_ssize_t end = s + CHUNK < n ? s + CHUNK : n;
        for (i = s; i + W <= end; i += W)
            for (int j = 0; j < W; j++) {
                /* (written so GCC vectorises it: fabsf and a bool sum it does not) */
                float d = y[i + j] - x[i + j];
                float a = d < 0.0f ? -d : d;
                k[j] -= a != 0.0f ? -1 : 0;
                w[j] = a > w[j] ? a : w[j];
            }
        for (int j = 0; j < W; j++)
            changed += k[j];
    }
    for (; i < n; i++) {
        float d = fabsf(y[i] - x[i]);
        changed += (d != 0.0f);
        w[0] = d > w[0] ? d : w[0];
    }
    c->changed += changed;
    for (int j = 0; j < W; j++)
        c->worst = w[j] > c->worst ? w[j] : c->worst;
}

/* pair_f32's result tuple. */
static PyObject *pair_value(Py_ssize_t n, const moments *mx, const moments *my, const changes *c) {
    return Py_BuildValue("((ddddn)(ddddn)nd)", mx->sum / (double)n, mx->m2, (double)mx->lo,
                         (double)mx->hi, mx->zeros, my->sum / (double)n, my->m2,
                         (double)my->lo, (double)my->hi, my->zeros, c->changed,
                         (double)c->worst);
}

PyDoc_STRVAR(map_pair_doc,
             "map_pair_f32(x, out, kind, a, b) -> (x_moments, y_moments, changed,\n"
             "    max_abs_change) or None\n\n"
             "out = x * a (kind 0: scale.py's float32 product), min(max(x, a), b) (kind 1:\n"
             "np.clip's float32 result, for bounds other than zero) or prune.prune_block's\n"
             "result (kind 2: a is the threshold's bit pattern, x[0] is element ``first``\n"
             "of the tensor and ties up to ``limit`` are zeroed), and then pair_f32(x,\n"
             "out)'s figures, a slice at a time while it is in cache: one pass over the\n"
             "block instead of the transform's and the summary's. None (out written) where\n"
             "pair_f32 gives None.");

/* Elements mapped, then summed, at a time: x's and out's slices stay in L1/L2. */
#define SLICE (16 * CHUNK)

/* kind 2 (prune.prune_block): |x|'s bit pattern below ``thr`` zeroed, and equal to it
 * up to flat index ``limit`` (``at``: the flat index of x[0]); zero values kept as they
 * are. A zeroed value becomes +0.0, as numpy's product of its bits with 0 makes it. */
VECTOR_CLONES
static void map_run(const float *restrict x, float *restrict y, Py_ssize_t n, int kind, float a,
                    float b, uint32_t thr, Py_ssize_t at, Py_ssize_t limit) {
    if (kind == 0) {
        for (Py_ssize_t i = 0; i < n; i++)
            y[i] = x[i] * a;
    } else if (kind == 1) {
        for (Py_ssize_t i = 0; i < n; i++) {
            float v = x[i] < a ? a : x[i];
            y[i] = v > b ? b : v;
        }
    } else {
        const uint32_t *restrict u = (const uint32_t *)x;
        uint32_t *restrict w = (uint32_t *)y;
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t m = u[i] & 0x7FFFFFFFu;
            int zero = (m < thr || (m == thr && at + i <= limit)) && m != 0;
            w[i] = zero ? 0u : u[i];
        }
    }
}

/* pair_f32 (kind -1: y given) and map_pair_f32 (y = kind's map of x): y's slices made
 * and summed while they are in cache. */
static PyObject *pair_slices(PyObject *xo, PyObject *yo, int kind, double a_d, double b_d,
                             Py_ssize_t first, Py_ssize_t limit) {
    Py_buffer xb, yb;
    if (get_two_f32(xo, yo, &xb, &yb, kind >= 0) < 0)
        return NULL;
    Py_ssize_t n = xb.len / (Py_ssize_t)sizeof(float);
    moments mx, my;
    changes c;
    int ok = 0;
    if (n > 0) {
        const float *x = (const float *)xb.buf;
        float *y = (float *)yb.buf;
        const float a = kind == 2 ? 0.0f : (float)a_d, b = (float)b_d;
        const uint32_t thr = kind == 2 ? (uint32_t)a_d : 0u;
        Py_BEGIN_ALLOW_THREADS;
        moments_init(&mx);
        moments_init(&my);
        c.changed = 0;
        c.worst = 0.0f;
        for (Py_ssize_t s = 0; s < n; s += SLICE) {
            Py_ssize_t len = n - s < SLICE ? n - s : SLICE;
            if (kind >= 0)
                map_run(x + s, y + s, len, kind, a, b, thr, first + s, limit);
            sums_add(x + s, len, &mx);
            sums_add(y + s, len, &my);
            changes_add(x + s, y + s, len, &c);
        }
        ok = moments_finish(x, n, &mx) && moments_finish(y, n, &my) && isfinite(c.worst);
        Py_END_ALLOW_THREADS;
    }
    PyBuffer_Release(&xb);
    PyBuffer_Release(&yb);
    if (!ok)
        Py_RETURN_NONE;
    return pair_value(n, &mx, &my, &c);
}

static PyObject *pair_f32(PyObject *self, PyObject *args) {
    PyObject *xo, *yo;
    if (!PyArg_ParseTuple(args, "OO", &xo, &yo))
        return NULL;
    return pair_slices(xo, yo, -1, 0.0, 0.0, 0, -1);
}

static PyObject *map_pair_f32(PyObject *self, PyObject *args) {
    PyObject *xo, *yo;
    int kind;
    double a_d, b_d;
    Py_ssize_t first = 0, limit = -1;
    if (!PyArg_ParseTuple(args, "OOidd|nn", &xo, &yo, &kind, &a_d, &b_d, &first, &limit))
        return NULL;
    if (kind < 0 || kind > 2 || (kind == 2 && !(a_d >= 0 && a_d <= 2147483647.0))) {
        PyErr_SetString(PyExc_ValueError,
                        "map_pair_f32: kind is 0 (scale), 1 (clip) or 2 (prune, a: the "
                        "threshold's 31-bit pattern)");
        return NULL;
    }
    return pair_slices(xo, yo, kind, a_d, b_d, first, limit);
}

PyDoc_STRVAR(fq_doc,
             "fake_quant_f32(x, out, scale, zero, inner, qmin, qmax) ->\n"
             "    (signal, noise, max_abs_error) or None\n\n"
             "Quantize-dequantize float32 x into out, bit for bit as quantize.py's numpy\n"
             "path: q = x / scale (float64), rounded half away from zero, + zero, clipped to\n"
             "[qmin, qmax], - zero, * scale, to float32. scale and zero are float64 vectors\n"
             "of C channels; element i belongs to channel (i / inner) %% C. Also the error\n"
             "figures: sum of x^2, sum of (out - x)^2 and max |out - x|. None (out partly\n"
             "written) when x holds NaN/Inf.");

typedef struct {
    double signal, noise;
    float worst;
} qerror;

/* One run of ``len`` elements; channel ``c`` of element k is k (per_element) or 0.
 * Inlined into one function per (per_element, shifted) so each loop has no branch;
 * the quantization and the error sums are two loops over the run (each vectorises). */
static inline __attribute__((always_inline)) void fq_run(const float *restrict x,
                                                         float *restrict out, Py_ssize_t len,
                                                         const double *restrict scale,
                                                         const double *restrict zero,
                                                         int per_element, int shifted,
                                                         double qmin, double qmax, qerror *err) {
    for (Py_ssize_t i = 0; i < len; i++) {
        Py_ssize_t c = per_element ? i : 0;
        double q = (double)x[i] / scale[c];
        double t = floor(fabs(q) + 0.5);
        q = copysign(t, q);
        if (shifted)
            q += zero[c];
        q = q < qmin ? qmin : q; /* np.clip: minimum(maximum(q, qmin), qmax) */
        q = q > qmax ? qmax : q;
        if (shifted)
            q -= zero[c];
        q *= scale[c];
        out[i] = (float)q;
    }
    float sg[W], ns[W], w[W];
    for (int j = 0; j < W; j++)
        sg[j] = ns[j] = w[j] = 0.0f;
    Py_ssize_t i = 0;
    for (; i + W <= len; i += W)
        for (int j = 0; j < W; j++) {
            float v = x[i + j];
            float e = out[i + j] - v; /* as np.subtract(y, x) in float32 */
            float a = e < 0.0f ? -e : e;
            sg[j] += v * v;
            ns[j] += e * e;
            w[j] = a > w[j] ? a : w[j];
        }
    double signal = 0.0, noise = 0.0;
    float worst = 0.0f;
    for (; i < len; i++) {
        float e = out[i] - x[i];
        float a = e < 0.0f ? -e : e;
        signal += (double)x[i] * x[i];
        noise += (double)e * e;
        worst = a > worst ? a : worst;
    }
    for (int j = 0; j < W; j++) {
        signal += sg[j];
        noise += ns[j];
        worst = w[j] > worst ? w[j] : worst;
    }
    err->signal += signal;
    err->noise += noise;
    err->worst = worst > err->worst ? worst : err->worst;
}

#define FQ_VARIANT(name, per_element, shifted)                                              \
    VECTOR_CLONES                                                                            \
    static void name(const float *x, float *out, Py_ssize_t len, const double *scale,       \
                     const double *zero, double qmin, double qmax, qerror *err) {           \
        fq_run(x, out, len, scale, zero, per_element, shifted, qmin, qmax, err);             \
    }
FQ_VARIANT(fq_vector, 1, 0)
FQ_VARIANT(fq_vector_shifted, 1, 1)
FQ_VARIANT(fq_scalar, 0, 0)
FQ_VARIANT(fq_scalar_shifted, 0, 1)

static PyObject *fake_quant_f32(PyObject *self, PyObject *args) {
    PyObject *xo, *oo, *so, *zo;
    Py_ssize_t inner;
    double qmin, qmax;
    if (!PyArg_ParseTuple(args, "OOOOndd", &xo, &oo, &so, &zo, &inner, &qmin, &qmax))
        return NULL;
    Py_buffer xb, ob, sb, zb;
    if (get_buffer(xo, &xb, "f", 0) < 0)
        return NULL;
    if (get_buffer(oo, &ob, "f", 1) < 0) {
        PyBuffer_Release(&xb);
        return NULL;
    }
    if (get_buffer(so, &sb, "d", 0) < 0) {
        PyBuffer_Release(&xb);
        PyBuffer_Release(&ob);
        return NULL;
    }
    if (get_buffer(zo, &zb, "d", 0) < 0) {
        PyBuffer_Release(&xb);
        PyBuffer_Release(&ob);
        PyBuffer_Release(&sb);
        return NULL;
    }
    Py_ssize_t n = xb.len / (Py_ssize_t)sizeof(float);
    Py_ssize_t channels = sb.len / (Py_ssize_t)sizeof(double);
    int bad = ob.len != xb.len || zb.len != sb.len || channels < 1 || inner < 1 ||
              n % (channels * inner) != 0;
    int ok = 0;
    double signal = 0.0, noise = 0.0;
    float worst = 0.0f;
    if (!bad) {
        const float *x = (const float *)xb.buf;
        float *out = (float *)ob.buf;
        const double *scale = (const double *)sb.buf, *zero = (const double *)zb.buf;
        int shifted = 0;
        for (Py_ssize_t c = 0; c < channels; c++)
            shifted |= zero[c] != 0.0;
        Py_BEGIN_ALLOW_THREADS;
        qerror err = {0.0, 0.0, 0.0f};
        Py_ssize_t run = channels * inner;
        /* Runs of at most CHUNK elements: float32 error sums stay short. */
        for (Py_ssize_t o = 0; o < n; o += run) {
            if (inner == 1) { /* channels along the last axis: one scale per element */
                for (Py_ssize_t c = 0; c < channels; c += CHUNK) {
                    Py_ssize_t len = channels - c < CHUNK ? channels - c : CHUNK;
                    (shifted ? fq_vector_shifted : fq_vector)(x + o + c, out + o + c, len,
                                                               scale + c, zero + c, qmin, qmax,
                                                               &err);
                }
            } else {
                for (Py_ssize_t c = 0; c < channels; c++)
                    for (Py_ssize_t k = 0; k < inner; k += CHUNK) {
                        Py_ssize_t at = o + c * inner + k;
                        Py_ssize_t len = inner - k < CHUNK ? inner - k : CHUNK;
                        (shifted ? fq_scalar_shifted : fq_scalar)(x + at, out + at, len,
                                                               scale + c, zero + c, qmin, qmax,
                                                               &err);
                    }
            }
        }
        signal = err.signal;
        noise = err.noise;
        worst = err.worst;
        ok = isfinite(signal) && isfinite(noise) && isfinite(worst);
        Py_END_ALLOW_THREADS;
    }
    PyBuffer_Release(&xb);
    PyBuffer_Release(&ob);
    PyBuffer_Release(&sb);
    PyBuffer_Release(&zb);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "fake_quant_f32: sizes do not fit");
        return NULL;
    }
    if (!ok)
        Py_RETURN_NONE;
    return Py_BuildValue("(ddd)", signal, noise, (double)worst);
}

PyDoc_STRVAR(hist_doc,
             "abs_hist_f32(x, hist, prefix, window=None, lo=0) -> nan_seen\n\n"
             "Radix histogram of float32 |x| bit patterns into hist (65536 int64 counts,\n"
             "added to). prefix < 0: the high 16 bits of each |x| (the sign masked off);\n"
             "else the low 16 bits of the values whose high 16 bits of |x| equal prefix.\n"
             "Returns True when x holds a NaN (the first kind only; the counts are then\n"
             "partial and the caller refuses the tensor). window (first kind only): 3 x\n"
             "65536 int64 counts, added to, of the low 16 bits of the values whose high\n"
             "16 bits are lo, lo + 1, lo + 2.");

/* Bins whose low halves the first pass can count besides (prune.AbsKth's guess). */
#define WINDOW 3

/* Straight into the caller's counts: a block's 256 Ki values spread over many bins,
 * and four interleaved sub-histograms cost more to clear and add up per block than the
 * increments they would spare (measured). */
static int abs_hist(const uint32_t *restrict bits, Py_ssize_t n, int64_t *restrict hist,
                    long prefix, int64_t *restrict window, long lo) {
    uint32_t nan = 0;
    if (prefix < 0 && window != NULL) { /* and the low halves of bins lo .. lo + WINDOW - 1 */
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t a = bits[i] & 0x7FFFFFFFu;
            nan |= a > 0x7F800000u;
            uint32_t h = a >> 16, d = h - (uint32_t)lo;
            hist[h]++;
            if (d < WINDOW)
                window[(Py_ssize_t)d * 65536 + (a & 0xFFFFu)]++;
        }
    } else if (prefix < 0) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t a = bits[i] & 0x7FFFFFFFu;
            nan |= a > 0x7F800000u;
            hist[a >> 16]++;
        }
    } else {
        uint32_t want = (uint32_t)prefix;
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t a = bits[i] & 0x7FFFFFFFu;
            if ((a >> 16) == want)
                hist[a & 0xFFFFu]++;
        }
    }
    return nan != 0;
}

static PyObject *abs_hist_f32(PyObject *self, PyObject *args) {
    PyObject *xo, *ho, *wo = Py_None;
    long prefix, lo = 0;
    if (!PyArg_ParseTuple(args, "OOl|Ol", &xo, &ho, &prefix, &wo, &lo))
        return NULL;
    if (prefix > 0x7FFF || lo < 0 || lo > 0x7FFF) {
        PyErr_SetString(PyExc_ValueError, "abs_hist_f32: prefix out of range");
        return NULL;
    }
    Py_buffer wb;
    int64_t *window = NULL;
    if (wo != Py_None) {
        if (prefix >= 0) {
            PyErr_SetString(PyExc_ValueError, "abs_hist_f32: a window goes with the first pass");
            return NULL;
        }
        if (get_buffer(wo, &wb, "q", 1) < 0 && get_buffer(wo, &wb, "l", 1) < 0)
            return NULL;
        PyErr_Clear();
        if (wb.len != WINDOW * 65536 * (Py_ssize_t)sizeof(int64_t) ||
            wb.itemsize != sizeof(int64_t)) {
            PyBuffer_Release(&wb);
            PyErr_SetString(PyExc_ValueError, "abs_hist_f32: window must be 3 x 65536 int64");
            return NULL;
        }
        window = (int64_t *)wb.buf;
    }
    Py_buffer xb, hb;
    if (get_buffer(xo, &xb, "f", 0) < 0) {
        if (window != NULL)
            PyBuffer_Release(&wb);
        return NULL;
    }
    if (get_buffer(ho, &hb, "q", 1) < 0 && get_buffer(ho, &hb, "l", 1) < 0) {
        PyBuffer_Release(&xb);
        if (window != NULL)
            PyBuffer_Release(&wb);
        return NULL;
    }
    PyErr_Clear();
    if (hb.len != 65536 * (Py_ssize_t)sizeof(int64_t) || hb.itemsize != sizeof(int64_t)) {
        PyBuffer_Release(&xb);
        PyBuffer_Release(&hb);
        if (window != NULL)
            PyBuffer_Release(&wb);
        PyErr_SetString(PyExc_ValueError, "abs_hist_f32: hist must be 65536 int64 counts");
        return NULL;
    }
    int nan;
    Py_BEGIN_ALLOW_THREADS;
    nan = abs_hist((const uint32_t *)xb.buf, xb.len / 4, (int64_t *)hb.buf, prefix, window, lo);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&xb);
    PyBuffer_Release(&hb);
    if (window != NULL)
        PyBuffer_Release(&wb);
    return PyBool_FromLong(nan);
}

PyDoc_STRVAR(lincomb_doc,
             "lincomb_f32(out, xs, a, c) -> None\n\n"
             "out = float32(acc) where acc = x0 * a0, then acc = acc * c[k] + x[k] * a[k]\n"
             "for k >= 1, in float64 in that order (merge's mean and ema, bit for bit as\n"
             "their numpy path). xs: float32 buffers of out's size; a, c: floats, one per x\n"
             "(c[0] unused).");

#define MAX_INPUTS 64

VECTOR_CLONES
static void lincomb(float *restrict out, const float **xs, int k, Py_ssize_t n,
                    const double *a, const double *c) {
    double acc[CHUNK];
    for (Py_ssize_t s = 0; s < n; s += CHUNK) {
        Py_ssize_t len = n - s < CHUNK ? n - s : CHUNK;
        const float *x0 = xs[0] + s;
        const double a0 = a[0];
        for (Py_ssize_t j = 0; j < len; j++)
            acc[j] = (double)x0[j] * a0;
        for (int i = 1; i < k; i++) {
            const float *xi = xs[i] + s;
            const double ai = a[i], ci = c[i];
            for (Py_ssize_t j = 0; j < len; j++) {
                double t = (double)xi[j] * ai;
                acc[j] = acc[j] * ci + t;
            }
        }
        for (Py_ssize_t j = 0; j < len; j++)
            out[s + j] = (float)acc[j];
    }
}

static PyObject *lincomb_f32(PyObject *self, PyObject *args) {
    PyObject *oo, *xso, *ao, *co;
    if (!PyArg_ParseTuple(args, "OO!O!O!", &oo, &PyTuple_Type, &xso, &PyTuple_Type, &ao,
                          &PyTuple_Type, &co))
        return NULL;
    Py_ssize_t k = PyTuple_GET_SIZE(xso);
    if (k < 1 || k > MAX_INPUTS || PyTuple_GET_SIZE(ao) != k || PyTuple_GET_SIZE(co) != k) {
        PyErr_SetString(PyExc_ValueError, "lincomb_f32: 1 to 64 inputs, one a and c each");
        return NULL;
    }
    Py_buffer ob, xb[MAX_INPUTS];
    const float *xs[MAX_INPUTS];
    double a[MAX_INPUTS], c[MAX_INPUTS];
    for (Py_ssize_t i = 0; i < k; i++) {
        a[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(ao, i));
        c[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(co, i));
    }
    if (PyErr_Occurred())
        return NULL;
    if (get_buffer(oo, &ob, "f", 1) < 0)
        return NULL;
    Py_ssize_t got = 0;
    int bad = 0;
    for (; got < k; got++) {
        if (get_buffer(PyTuple_GET_ITEM(xso, got), &xb[got], "f", 0) < 0) {
            bad = 1;
            break;
        }
        xs[got] = (const float *)xb[got].buf;
        if (xb[got].len != ob.len) {
            got++;
            bad = 2;
            break;
        }
    }
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS;
        lincomb((float *)ob.buf, xs, (int)k, ob.len / (Py_ssize_t)sizeof(float), a, c);
        Py_END_ALLOW_THREADS;
    }
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&xb[i]);
    PyBuffer_Release(&ob);
    if (bad == 2)
        PyErr_SetString(PyExc_ValueError, "lincomb_f32: inputs differ in size");
    if (bad)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(diff_doc,
             "diff_f32(a, b, atol, rtol) -> (beyond, max_abs, sum_abs, dd, aa, bb, ab,\n"
             "    zeros_a, zeros_b) or None\n\n"
             "diff's metrics of two float32 blocks: how many elements np.isclose calls not\n"
             "close (|a - b| > atol + rtol * |b|, in float32 as numpy computes it), the\n"
             "largest and summed |a - b|, the sums of (a-b)^2, a^2, b^2, a*b, and the exact\n"
             "zeros of each; None when either holds NaN/Inf or a difference overflows.");

typedef struct {
    Py_ssize_t beyond, zeros_a, zeros_b;
    float worst;
    double sum_abs, dd, aa, bb, ab;
} diffsums;

VECTOR_CLONES
static void diff_run(const float *restrict x, const float *restrict y, Py_ssize_t n,
                     float atol, float rtol, diffsums *r) {
    float w[W];
    for (int j = 0; j < W; j++)
        w[j] = 0.0f;
    Py_ssize_t i = 0;
    for (Py_ssize_t s = 0; s + W <= n; s += CHUNK) {
        float sa[W], sd[W], sx[W], sy[W], sxy[W];
        int kb[W], kx[W], ky[W];
        for (int j = 0; j < W; j++) {
            sa[j] = sd[j] = sx[j] = sy[j] = sxy[j] = 0.0f;
            kb[j] = kx[j] = ky[j] = 0;
        }
        Py_ssize_t end = s + CHUNK < n ? s + CHUNK : n;
        for (i = s; i + W <= end; i += W)
            for (int j = 0; j < W; j++) {
                float u = x[i + j], v = y[i + j];
                float d = u - v;
                float ad = d < 0.0f ? -d : d;
                float av = v < 0.0f ? -v : v;
                float limit = atol + rtol * av;
                kb[j] -= ad > limit ? -1 : 0;
                kx[j] -= u == 0.0f ? -1 : 0;
                ky[j] -= v == 0.0f ? -1 : 0;
                w[j] = ad > w[j] ? ad : w[j];
                sa[j] += ad;
                sd[j] += ad * ad;
                sx[j] += u * u;
                sy[j] += v * v;
                sxy[j] += u * v;
            }
        for (int j = 0; j < W; j++) {
            r->beyond += kb[j];
            r->zeros_a += kx[j];
            r->zeros_b += ky[j];
            r->sum_abs += sa[j];
            r->dd += sd[j];
            r->aa += sx[j];
            r->bb += sy[j];
            r->ab += sxy[j];
        }
    }
    for (; i < n; i++) {
        float u = x[i], v = y[i];
        float d = u - v;
        float ad = d < 0.0f ? -d : d;
        float av = v < 0.0f ? -v : v;
        float limit = atol + rtol * av;
        r->beyond += ad > limit;
        r->zeros_a += u == 0.0f;
        r->zeros_b += v == 0.0f;
        w[0] = ad > w[0] ? ad : w[0];
        r->sum_abs += ad;
        r->dd += (double)ad * ad;
        r->aa += (double)u * u;
        r->bb += (double)v * v;
        r->ab += (double)u * v;
    }
    r->worst = w[0];
    for (int j = 1; j < W; j++)
        r->worst = w[j] > r->worst ? w[j] : r->worst;
}

static PyObject *diff_f32(PyObject *self, PyObject *args) {
    PyObject *xo, *yo;
    double atol, rtol;
    if (!PyArg_ParseTuple(args, "OOdd", &xo, &yo, &atol, &rtol))
        return NULL;
    Py_buffer xb, yb;
    if (get_two_f32(xo, yo, &xb, &yb, 0) < 0)
        return NULL;
    Py_ssize_t n = xb.len / (Py_ssize_t)sizeof(float);
    diffsums r = {0, 0, 0, 0.0f, 0.0, 0.0, 0.0, 0.0, 0.0};
    int ok;
    Py_BEGIN_ALLOW_THREADS;
    diff_run((const float *)xb.buf, (const float *)yb.buf, n, (float)atol, (float)rtol, &r);
    /* NaN/Inf anywhere reach these sums (or the largest difference: an overflow) */
    ok = isfinite(r.worst) && isfinite(r.aa) && isfinite(r.bb) && isfinite(r.sum_abs) &&
         isfinite(r.dd) && isfinite(r.ab);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&xb);
    PyBuffer_Release(&yb);
    if (!ok || n == 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(nddddddnn)", r.beyond, (double)r.worst, r.sum_abs, r.dd, r.aa, r.bb,
                         r.ab, r.zeros_a, r.zeros_b);
}

PyDoc_STRVAR(bins_doc,
             "bins_f32(x, counts, lo, scale, top, near, edges) -> None\n\n"
             "distribution._Float32Bins.count in one pass: each float32 value's bin is\n"
             "floor((x - lo) * scale) in float32, clamped to [0, top]; a value within near\n"
             "of an edge (|f - rint(f)| < near) is binned by numpy's float32 edges instead\n"
             "(searchsorted side=right, minus one, clamped). counts: int64, added to.");

/* Each value's bin, or -1 for a value within ``near`` of an edge (vectorised: the
 * counting loop that follows is not). */
VECTOR_CLONES
static void bins_run(const float *restrict x, Py_ssize_t n, float lo, float scale, float top,
                     float near, int32_t *restrict idx) {
    for (Py_ssize_t i = 0; i < n; i++) {
        float f = (x[i] - lo) * scale;
        float r = f - rintf(f);
        float a = r < 0.0f ? -r : r;
        float g = f > 0.0f ? f : 0.0f;
        g = g < top ? g : top;
        idx[i] = a < near ? -1 : (int32_t)g;
    }
}

static PyObject *bins_f32(PyObject *self, PyObject *args) {
    PyObject *xo, *co, *eo;
    double lo_d, scale_d, top_d, near_d;
    if (!PyArg_ParseTuple(args, "OOddddO", &xo, &co, &lo_d, &scale_d, &top_d, &near_d, &eo))
        return NULL;
    Py_buffer xb, cb, eb;
    if (get_buffer(xo, &xb, "f", 0) < 0)
        return NULL;
    if (get_buffer(co, &cb, "q", 1) < 0 && get_buffer(co, &cb, "l", 1) < 0) {
        PyBuffer_Release(&xb);
        return NULL;
    }
    PyErr_Clear();
    if (get_buffer(eo, &eb, "f", 0) < 0) {
        PyBuffer_Release(&xb);
        PyBuffer_Release(&cb);
        return NULL;
    }
    Py_ssize_t bins = cb.len / (Py_ssize_t)sizeof(int64_t);
    Py_ssize_t nedges = eb.len / (Py_ssize_t)sizeof(float);
    if (cb.itemsize != sizeof(int64_t) || nedges != bins + 1 || bins < 1 || top_d != bins - 1) {
        PyBuffer_Release(&xb);
        PyBuffer_Release(&cb);
        PyBuffer_Release(&eb);
        PyErr_SetString(PyExc_ValueError, "bins_f32: counts, edges and top disagree");
        return NULL;
    }
    const float *x = (const float *)xb.buf, *edges = (const float *)eb.buf;
    int64_t *counts = (int64_t *)cb.buf;
    Py_ssize_t n = xb.len / (Py_ssize_t)sizeof(float);
    const float lo = (float)lo_d, scale = (float)scale_d, top = (float)top_d,
                near = (float)near_d;
    Py_BEGIN_ALLOW_THREADS;
    int32_t idx[CHUNK];
    for (Py_ssize_t s = 0; s < n; s += CHUNK) {
        Py_ssize_t len = n - s < CHUNK ? n - s : CHUNK;
        bins_run(x + s, len, lo, scale, top, near, idx);
        for (Py_ssize_t j = 0; j < len; j++) {
            Py_ssize_t k = idx[j];
            if (k < 0) { /* at an edge: numpy's own comparison, the first edge > x */
                float v = x[s + j];
                Py_ssize_t a = 0, b = nedges;
                while (a < b) {
                    Py_ssize_t m = (a + b) / 2;
                    if (edges[m] <= v)
                        a = m + 1;
                    else
                        b = m;
                }
                k = a - 1;
                k = k < 0 ? 0 : (k > bins - 1 ? bins - 1 : k);
            }
            counts[k]++;
        }
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&xb);
    PyBuffer_Release(&cb);
    PyBuffer_Release(&eb);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(task_doc,
             "task_combine_f32(out, carrier, xs, keeps, factors, weights, consensus,\n"
             "    normalize, lam) -> agreeing\n\n"
             "The generalized task arithmetic of transforms/merge.py (combine) and\n"
             "commands/merge.py (_mixed, apply) for float32 blocks, bit for bit as their\n"
             "float64 numpy steps (a NaN's sign and payload aside: the CPU takes them from\n"
             "the operand order, which numpy's vector loops choose): d_i = (x_i - carrier)\n"
             "* keep_i * factor_i; with consensus the elected sign of their sum, the agreeing\n"
             "magnitudes summed (divided by the agreeing weights with normalize); else the\n"
             "sum (divided by the weights' sum with normalize); out = carrier + lam * mixed.\n"
             "keeps: a bool buffer or None per input. Returns the elements on which every\n"
             "input agrees (consensus).");

typedef struct {
    const float *x;
    const uint8_t *keep;
    double factor, weight;
} task_input;

/* One chunk of ``len`` elements, input by input (each loop runs over the chunk, so it
 * vectorises): d holds the k weighted deltas, one row of CHUNK each. */
VECTOR_CLONES
static Py_ssize_t task_chunk(float *restrict out, const float *restrict carrier, Py_ssize_t len,
                             const task_input *in, int k, int consensus, int normalize,
                             double wsum, double lam, double *restrict d) {
    double c[CHUNK], total[CHUNK], kept[CHUNK], div[CHUNK], el[CHUNK];
    int every[CHUNK];
    for (Py_ssize_t j = 0; j < len; j++)
        c[j] = (double)carrier[j];
    for (int i = 0; i < k; i++) {
        double *restrict di = d + (Py_ssize_t)i * CHUNK;
        const float *restrict x = in[i].x;
        const uint8_t *restrict keep = in[i].keep;
        const double f = in[i].factor;
        for (Py_ssize_t j = 0; j < len; j++)
            di[j] = (double)x[j] - c[j];
        if (keep)
            for (Py_ssize_t j = 0; j < len; j++)
                di[j] = di[j] * (keep[j] ? 1.0 : 0.0);
        if (f != 1.0)
            for (Py_ssize_t j = 0; j < len; j++)
                di[j] = di[j] * f;
        if (i == 0)
            for (Py_ssize_t j = 0; j < len; j++)
                total[j] = di[j];
        else
            for (Py_ssize_t j = 0; j < len; j++)
                total[j] = total[j] + di[j];
    }
    Py_ssize_t agreeing = 0;
    if (consensus) {
        for (Py_ssize_t j = 0; j < len; j++) {
            el[j] = copysign(1.0, total[j]);
            kept[j] = div[j] = 0.0;
            every[j] = 1;
        }
        for (int i = 0; i < k; i++) {
            const double *restrict di = d + (Py_ssize_t)i * CHUNK;
            const double w = in[i].weight, w0 = in[i].weight * 0.0;
            for (Py_ssize_t j = 0; j < len; j++) {
                double t = di[j] * el[j];
                every[j] &= t >= 0.0;
                if (normalize)
                    div[j] = div[j] + (t > 0.0 ? w : w0);
                t = (t >= 0.0 || t != t) ? t : 0.0; /* np.maximum(t, 0): NaN stays */
                kept[j] = kept[j] + t;
            }
        }
        for (Py_ssize_t j = 0; j < len; j++) {
            double mixed = kept[j] * el[j];
            agreeing += every[j];
            if (normalize)
                mixed = mixed / (div[j] == 0.0 ? 1.0 : div[j]);
            out[j] = (float)(c[j] + lam * mixed);
        }
    } else {
        for (Py_ssize_t j = 0; j < len; j++) {
            double mixed = normalize ? total[j] / wsum : total[j];
            out[j] = (float)(c[j] + lam * mixed);
        }
    }
    return agreeing;
}

static Py_ssize_t task_run(float *out, const float *carrier, Py_ssize_t n, task_input *in, int k,
                           int consensus, int normalize, double wsum, double lam, double *d) {
    Py_ssize_t agreeing = 0;
    const float *x0[MAX_INPUTS];
    const uint8_t *k0[MAX_INPUTS];
    for (int i = 0; i < k; i++) {
        x0[i] = in[i].x;
        k0[i] = in[i].keep;
    }
    for (Py_ssize_t s = 0; s < n; s += CHUNK) {
        Py_ssize_t len = n - s < CHUNK ? n - s : CHUNK;
        for (int i = 0; i < k; i++) {
            in[i].x = x0[i] + s;
            in[i].keep = k0[i] ? k0[i] + s : NULL;
        }
        agreeing += task_chunk(out + s, carrier + s, len, in, k, consensus, normalize, wsum, lam,
                               d);
    }
    return agreeing;
}

static PyObject *task_combine_f32(PyObject *self, PyObject *args) {
    PyObject *oo, *co, *xso, *kso, *fo, *wo;
    int consensus, normalize;
    double lam;
    if (!PyArg_ParseTuple(args, "OOO!O!O!O!ppd", &oo, &co, &PyTuple_Type, &xso, &PyTuple_Type,
                          &kso, &PyTuple_Type, &fo, &PyTuple_Type, &wo, &consensus, &normalize,
                          &lam))
        return NULL;
    Py_ssize_t k = PyTuple_GET_SIZE(xso);
    if (k < 1 || k > MAX_INPUTS || PyTuple_GET_SIZE(kso) != k || PyTuple_GET_SIZE(fo) != k ||
        PyTuple_GET_SIZE(wo) != k) {
        PyErr_SetString(PyExc_ValueError, "task_combine_f32: 1 to 64 inputs, all lists alike");
        return NULL;
    }
    task_input in[MAX_INPUTS];
    double wsum = 0.0;
    for (Py_ssize_t i = 0; i < k; i++) {
        in[i].factor = PyFloat_AsDouble(PyTuple_GET_ITEM(fo, i));
        in[i].weight = PyFloat_AsDouble(PyTuple_GET_ITEM(wo, i));
        in[i].keep = NULL;
        wsum += in[i].weight;
    }
    if (PyErr_Occurred())
        return NULL;
    /* combine: total /= (1.0 if abs(sum(weights)) < 1e-8 else sum(weights)) */
    if (fabs(wsum) < 1e-8)
        wsum = 1.0;
    Py_buffer ob, cb, xb[MAX_INPUTS], kb[MAX_INPUTS];
    int held_x = 0, held_k[MAX_INPUTS] = {0};
    if (get_buffer(oo, &ob, "f", 1) < 0)
        return NULL;
    if (get_buffer(co, &cb, "f", 0) < 0) {
        PyBuffer_Release(&ob);
        return NULL;
    }
    int bad = cb.len != ob.len;
    for (; !bad && held_x < k; held_x++) {
        if (get_buffer(PyTuple_GET_ITEM(xso, held_x), &xb[held_x], "f", 0) < 0) {
            bad = 2;
            break;
        }
        in[held_x].x = (const float *)xb[held_x].buf;
        bad = xb[held_x].len != ob.len;
    }
    Py_ssize_t n = ob.len / (Py_ssize_t)sizeof(float);
    for (Py_ssize_t i = 0; !bad && i < k; i++) {
        PyObject *ko = PyTuple_GET_ITEM(kso, i);
        if (ko == Py_None)
            continue;
        if (get_buffer(ko, &kb[i], "?", 0) < 0) {
            bad = 2;
            break;
        }
        held_k[i] = 1;
        in[i].keep = (const uint8_t *)kb[i].buf;
        bad = kb[i].len != n;
    }
    Py_ssize_t agreeing = 0;
    double *d = bad ? NULL : PyMem_RawMalloc((size_t)k * CHUNK * sizeof(double));
    if (!bad && d == NULL)
        bad = 3;
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS;
        agreeing = task_run((float *)ob.buf, (const float *)cb.buf, n, in, (int)k, consensus,
                            normalize, wsum, lam, d);
        Py_END_ALLOW_THREADS;
    }
    PyMem_RawFree(d);
    for (int i = 0; i < held_x; i++)
        PyBuffer_Release(&xb[i]);
    for (Py_ssize_t i = 0; i < k; i++)
        if (held_k[i])
            PyBuffer_Release(&kb[i]);
    PyBuffer_Release(&ob);
    PyBuffer_Release(&cb);
    if (bad == 1)
        PyErr_SetString(PyExc_ValueError, "task_combine_f32: buffers differ in size");
    if (bad == 3)
        PyErr_NoMemory();
    if (bad)
        return NULL;
    return PyLong_FromSsize_t(agreeing);
}

static PyMethodDef methods[] = {
    {"stats_f32", stats_f32, METH_VARARGS, stats_doc},
    {"pair_f32", pair_f32, METH_VARARGS, pair_doc},
    {"map_pair_f32", map_pair_f32, METH_VARARGS, map_pair_doc},
    {"fake_quant_f32", fake_quant_f32, METH_VARARGS, fq_doc},
    {"abs_hist_f32", abs_hist_f32, METH_VARARGS, hist_doc},
    {"lincomb_f32", lincomb_f32, METH_VARARGS, lincomb_doc},
    {"diff_f32", diff_f32, METH_VARARGS, diff_doc},
    {"bins_f32", bins_f32, METH_VARARGS, bins_doc},
    {"task_combine_f32", task_combine_f32, METH_VARARGS, task_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "weightcli._native", "Fused float32 block kernels.", -1, methods,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
