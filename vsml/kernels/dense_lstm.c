/* Fused K-tick update of a dense grid of VSML sub-LSTMs (DESIGN.md 3.1).
 *
 * The hot path of ES evaluation and meta-test: for every cell (a, b) of every
 * member p and example n, z = row[a] + col[b] + h @ W_h, then the LSTM gates,
 * K times. row/col hold the message terms (W_f f[a] + bias and W_g g[b]),
 * computed once per row and column. No autograd: backprop meta-training uses
 * the PyTorch path.
 *
 * Written with GCC/Clang vector extensions (8 floats) so that it compiles to
 * AVX2 on x86 and NEON on Arm; needs S a multiple of 8. x86 intrinsics and
 * asm appear only behind #if, each with a portable fallback.
 *
 * Per cell and tick (S = 16), h @ W_h is 128 vector FMAs and the gates about
 * 120 vector operations. Each row is updated one tick at a time in two
 * phases, so that neither waits on the other's latency:
 *  1. h @ W_h for blocks of CELLS cells that share every loaded weight vector;
 *  2. the gates of LANES state vectors side by side (independent chains).
 * The gates use no exp and one division per c and per h: every gate input is
 * pre-scaled (through W_h, row and col) to y with sigmoid = 1 / (1 + 2^y) or
 * tanh = (1 - 2^-|y|) / (1 + 2^-|y|) with the sign of y, and 2^y is a ratio
 * num / den of two quadratics, times a power of two (absolute error < 1e-6).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

typedef float v8f __attribute__((vector_size(32), aligned(4)));
typedef int32_t v8i __attribute__((vector_size(32), aligned(4)));

#define MAX_S 64
#define CELLS 3 /* cells per block in the h @ W_h phase */
#define LANES 4 /* state vectors whose gates are computed side by side */
#define INLINE __attribute__((always_inline)) static inline

/* Pin a vector in a register and hide its value from the optimiser. Without
 * it, -ffast-math turns FMA chains into trees of mul and add, and folds the
 * rounding trick below away. A no-op where we have no asm constraint for it. */
#if defined(__AVX__) && defined(__GNUC__)
#define PIN(x) __asm__("" : "+x"(x))
#else
#define PIN(x) ((void)0)
#endif

static const float LOG2E = 1.44269504f;
/* 2^t ~ (BETA + u + u^2) / (BETA - u + u^2) with u = GAMMA t for |t| <= 1/2:
 * a minimax fit (relative error 4.4e-7) of the [2/2] Pade approximant's shape. */
static const float BETA = 0.33250308f, GAMMA = 0.11523607f;
/* Gate inputs are clamped to |y| <= Y_MAX: 2^-40 is below float resolution
 * of the gates, and products of three (1 + 2^y) stay finite. */
static const float Y_MAX = 40.0f;
/* Scale of z in y for gates i, g, f, o, and the offsets (biases -5 and +5). */
static const float Y_SCALE[4] = {-LOG2E, 2.0f * LOG2E, -LOG2E, -LOG2E};
static const float Y_SHIFT[4] = {5.0f * LOG2E, 0.0f, -5.0f * LOG2E, 0.0f};

INLINE v8f vmax(v8f x, float lo) {
#if defined(__AVX__)
    return _mm256_max_ps(x, _mm256_set1_ps(lo));
#else
    v8i below = x < lo;
    return (v8f)(((v8i)x & ~below) | ((v8i)(x * 0 + lo) & below));
#endif
}

INLINE v8f vmin(v8f x, float hi) {
#if defined(__AVX__)
    return _mm256_min_ps(x, _mm256_set1_ps(hi));
#else
    v8i above = x > hi;
    return (v8f)(((v8i)x & ~above) | ((v8i)(x * 0 + hi) & above));
#endif
}

/* 2^y = num / den for LANES vectors y in [-Y_MAX, Y_MAX]; den in [0.27, 0.4]. */
INLINE void exp2_ratio(const v8f *y, v8f *num, v8f *den) {
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to integer */
    v8f big[LANES], n[LANES];
    for (int l = 0; l < LANES; l++) big[l] = y[l] + magic;
    for (int l = 0; l < LANES; l++) {
#if defined(__AVX__) && defined(__GNUC__)
        n[l] = big[l];
        PIN(n[l]);
        n[l] -= magic;
        PIN(n[l]);
#else
        n[l] = __builtin_convertvector((v8i)big[l] - 0x4B400000, v8f);
#endif
    }
    for (int l = 0; l < LANES; l++) {
        v8f u = (y[l] - n[l]) * GAMMA;
        v8f even = u * u + BETA;
        den[l] = even - u;
        /* Times 2^n in the exponent bits: big's low mantissa bits hold n. */
        num[l] = (v8f)((v8i)(even + u) + ((v8i)big[l] << 23));
    }
}

/* sigmoid(x) = den / sum, from y = -x log2(e). */
INLINE void sigmoid_parts(const v8f *y, v8f *den, v8f *sum) {
    v8f clamped[LANES], num[LANES];
    for (int l = 0; l < LANES; l++) clamped[l] = vmin(vmax(y[l], -Y_MAX), Y_MAX);
    exp2_ratio(clamped, num, den);
    for (int l = 0; l < LANES; l++) sum[l] = den[l] + num[l];
}

/* tanh(x) = diff / sum, from y = 2 x log2(e); 2^-|y| needs one clamp only. */
INLINE void tanh_parts(const v8f *y, v8f *diff, v8f *sum) {
    const v8i sign = (v8i){} + INT32_MIN;
    v8f negative[LANES], num[LANES], den[LANES];
    for (int l = 0; l < LANES; l++)
        negative[l] = vmax((v8f)((v8i)y[l] | sign), -Y_MAX);
    exp2_ratio(negative, num, den);
    for (int l = 0; l < LANES; l++) {
        sum[l] = den[l] + num[l];
        diff[l] = (v8f)((v8i)(den[l] - num[l]) ^ ((v8i)y[l] & sign));
    }
}

/* One LSTM update of LANES state vectors: y [4][LANES] pre-scaled inputs of
 * gates i, g, f, o; c [LANES] in and out; h [LANES] out. */
INLINE void gates(v8f y[4][LANES], v8f *c, v8f *h) {
    v8f di[LANES], si[LANES], tg[LANES], sg[LANES], df[LANES], sf[LANES];
    v8f d_o[LANES], so[LANES], tc[LANES], sc[LANES], yc[LANES];
    sigmoid_parts(y[0], di, si);
    tanh_parts(y[1], tg, sg);
    sigmoid_parts(y[2], df, sf);
    sigmoid_parts(y[3], d_o, so);

    /* c = f c + i g = (c df si sg + di tg sf) / (sf si sg): one division. */
    for (int l = 0; l < LANES; l++) {
        v8f sig = si[l] * sg[l];
        c[l] = (c[l] * df[l] * sig + di[l] * tg[l] * sf[l]) / (sf[l] * sig);
    }

    /* h = o tanh(c) */
    for (int l = 0; l < LANES; l++) yc[l] = c[l] * (2.0f * LOG2E);
    tanh_parts(yc, tc, sc);
    for (int l = 0; l < LANES; l++) h[l] = d_o[l] * tc[l] / (so[l] * sc[l]);
}

/* y = yrow + ycol + h @ wy for n <= CELLS consecutive cells, V = S / 8 (a
 * literal at the hot call site, so that the loops unroll). y is stored gate
 * major: gate q of the cell's state vector v at y + q * qstride + v * 8. */
INLINE void block_matmul(int V, int n, const v8f *yrow, const v8f *ycol,
                         const float *wy, const float *h, float *y, int64_t qstride) {
    const int S = 8 * V;
#pragma GCC unroll 8
    for (int v = 0; v < V; v++) {
        v8f acc[CELLS][4];
        for (int j = 0; j < n; j++)
            for (int q = 0; q < 4; q++)
                acc[j][q] = yrow[q * V + v] + ycol[j * 4 * V + q * V + v];
#pragma GCC unroll 64
        for (int k = 0; k < S; k++) {
            const v8f *wk = (const v8f *)(wy + k * 4 * S);
            v8f w0 = wk[v], w1 = wk[V + v], w2 = wk[2 * V + v], w3 = wk[3 * V + v];
            for (int j = 0; j < n; j++) {
                const float hk = h[j * S + k];
                acc[j][0] += hk * w0;
                acc[j][1] += hk * w1;
                acc[j][2] += hk * w2;
                acc[j][3] += hk * w3;
                PIN(acc[j][0]);
                PIN(acc[j][1]);
                PIN(acc[j][2]);
                PIN(acc[j][3]);
            }
        }
        for (int j = 0; j < n; j++)
            for (int q = 0; q < 4; q++)
                ((v8f *)(y + q * qstride + j * S))[v] = acc[j][q];
    }
}

/* Phase 1 for S = 16: y [4, B, S] for the B cells of a row. */
__attribute__((noinline)) static void row_matmul16(int64_t B, const v8f *yrow,
                                                   const v8f *ycol, const float *wy,
                                                   const float *h, float *y) {
    int64_t b = 0;
    for (; b + CELLS <= B; b += CELLS)
        block_matmul(2, CELLS, yrow, ycol + b * 8, wy, h + b * 16, y + b * 16, B * 16);
    for (; b < B; b++)
        block_matmul(2, 1, yrow, ycol + b * 8, wy, h + b * 16, y + b * 16, B * 16);
}

/* Phase 1: y [4, B, S] = yrow + ycol + h @ wy for the B cells of a row. */
static void row_matmul(int V, int64_t B, const v8f *yrow, const v8f *ycol,
                       const float *wy, const float *h, float *y) {
    if (V == 2) {
        row_matmul16(B, yrow, ycol, wy, h, y);
        return;
    }
    for (int64_t b = 0; b < B; b++)
        block_matmul(V, 1, yrow, ycol + b * 4 * V, wy, h + b * 8 * V, y + b * 8 * V,
                     B * 8 * V);
}

/* Phase 2: the gates of the row's B * V state vectors, LANES at a time; the
 * last group repeats its final vector. c_in may equal c_out. */
__attribute__((noinline)) static void row_gates(int64_t items, const float *y,
                                                const float *c_in, float *c_out,
                                                float *h_out) {
    const v8f *yv = (const v8f *)y;
    for (int64_t first = 0; first < items; first += LANES) {
        v8f yy[4][LANES], c[LANES], h[LANES];
        int64_t idx[LANES];
        for (int l = 0; l < LANES; l++) {
            idx[l] = first + l < items ? first + l : items - 1;
            for (int q = 0; q < 4; q++) yy[q][l] = yv[q * items + idx[l]];
            c[l] = ((const v8f *)c_in)[idx[l]];
        }
        gates(yy, c, h);
        for (int l = 0; l < LANES; l++) {
            ((v8f *)c_out)[idx[l]] = c[l];
            ((v8f *)h_out)[idx[l]] = h[l];
        }
    }
}

/* Copy src [rows, G] into dst, each gate's S columns scaled by Y_SCALE. */
static void scale_gates(const float *src, float *dst, int64_t rows, int64_t S) {
    for (int64_t r = 0; r < rows; r++)
        for (int q = 0; q < 4; q++)
            for (int64_t s = 0; s < S; s++)
                dst[(r * 4 + q) * S + s] = Y_SCALE[q] * src[(r * 4 + q) * S + s];
}

/* Pre-scaled forward-message term of row r: bias + f[a] @ W_f. */
static void row_term(const float *fwd, const float *wp, const float *bias, int64_t M,
                     int V, v8f *yrow) {
    for (int j = 0; j < 4 * V; j++) yrow[j] = ((const v8f *)bias)[j];
    for (int64_t m = 0; m < M; m++) {
        if (fwd[m] == 0.0f) continue; /* input layers: only channel 0 is set */
        const v8f *wm = (const v8f *)(wp + m * 32 * V);
        for (int j = 0; j < 4 * V; j++) yrow[j] += fwd[m] * wm[j];
    }
    for (int q = 0; q < 4; q++)
        for (int v = 0; v < V; v++)
            yrow[q * V + v] = Y_SCALE[q] * yrow[q * V + v] + Y_SHIFT[q];
}

/* Update rows r in [begin, end) of the flattened (p, n, a) grid.
 *
 * fwd_in [P, N, A, M] incoming forward messages; col [P, N, B, 4S] backward
 * message terms (g[b] @ W_g); w [P, 2M + S, 4S] LSTM weights (x @ w layout);
 * bias [P, 4S]; h_in, c_in, h_out, c_out [P, N, A, B, S].
 * Also pools the new h for the read-outs: sum_b into pool_b [P, N, A, S] and
 * sum_a added into pool_a [P, N, B, S] (give each thread its own, zeroed).
 * All contiguous float32. Returns 0; -1 unless S is a multiple of 8 <= 64;
 * -2 when out of memory.
 */
int vsml_dense_update(const float *fwd_in, const float *col, const float *w,
                      const float *bias, const float *h_in, const float *c_in,
                      float *h_out, float *c_out, float *pool_b, float *pool_a,
                      int64_t N, int64_t A, int64_t B, int64_t M, int64_t S,
                      int64_t ticks, int64_t begin, int64_t end) {
    if (S % 8 != 0 || S <= 0 || S > MAX_S) return -1;
    const int64_t G = 4 * S;
    const int V = (int)(S / 8);

    /* Scratch, 64-byte aligned: scaled W_h [S, G] of the current member and
     * col [B, G] of the current (p, n); row term [G]; y [4, B, S]; h [B, S]. */
    float *raw = malloc(((S + 2 * B + 1) * G + B * S + 16) * sizeof(float));
    if (!raw) return -2;
    float *wy = (float *)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
    float *ycol = wy + S * G, *yrow = ycol + B * G, *ybuf = yrow + G;
    float *hbuf = ybuf + B * G;
    int64_t scaled_p = -1, scaled_pn = -1;

    for (int64_t r = begin; r < end; r++) {
        const int64_t p = r / (N * A), pn = r / A, cell = r * B * S;
        const float *wp = w + p * (2 * M + S) * G;
        if (p != scaled_p) scale_gates(wp + 2 * M * G, wy, S, S);
        if (pn != scaled_pn) scale_gates(col + pn * B * G, ycol, B, S);
        scaled_p = p;
        scaled_pn = pn;
        row_term(fwd_in + r * M, wp, bias + p * G, M, V, (v8f *)yrow);

        /* The row's ticks: all of h @ W_h, then all gates. */
        if (ticks <= 0) {
            memcpy(h_out + cell, h_in + cell, B * S * sizeof(float));
            memcpy(c_out + cell, c_in + cell, B * S * sizeof(float));
        }
        for (int64_t tick = 0; tick < ticks; tick++) {
            const float *h_src = tick == 0 ? h_in + cell : hbuf;
            float *h_dst = tick + 1 == ticks ? h_out + cell : hbuf;
            row_matmul(V, B, (const v8f *)yrow, (const v8f *)ycol, wy, h_src, ybuf);
            row_gates(B * V, ybuf, tick == 0 ? c_in + cell : c_out + cell, c_out + cell,
                      h_dst);
        }

        /* Pool the row's new states over b, and add them into the sum over a. */
        v8f *pb = (v8f *)(pool_b + r * S);
        v8f *pa = (v8f *)(pool_a + pn * B * S);
        const v8f *hh = (const v8f *)(h_out + cell);
        for (int v = 0; v < V; v++) pb[v] = (v8f){};
        for (int64_t b = 0; b < B; b++)
            for (int v = 0; v < V; v++) pb[v] += hh[b * V + v];
        for (int64_t i = 0; i < B * V; i++) pa[i] += hh[i];
    }
    free(raw);
    return 0;
}
