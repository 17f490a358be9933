/* Fused K-tick update of a dense grid of VSML sub-LSTMs (DESIGN.md 3.1).
 *
 * The hot path of ES evaluation and meta-test: for every cell (a, b) of every
 * member p and example n, z = row[a] + col[b] + h @ W_h, then the LSTM gates,
 * K times, with the cell's gates kept in registers. row/col hold the message
 * terms (W_f f[a] + bias and W_g g[b]) computed once per row and column.
 * No autograd: backprop meta-training uses the PyTorch path.
 *
 * Written with GCC/Clang vector extensions (8 floats) so that it compiles to
 * AVX2 on x86 and NEON on Arm without intrinsics; needs S a multiple of 8.
 */
#include <stdint.h>

typedef float v8f __attribute__((vector_size(32), aligned(4)));
typedef int32_t v8i __attribute__((vector_size(32), aligned(4)));

#define MAX_S 64
#define MAX_V (MAX_S / 8)

static inline v8f clamp(v8f x, float lo, float hi) {
    v8i below = x < lo, above = x > hi;
    v8i xi = (v8i)x;
    xi = (xi & ~below) | ((v8i)(x * 0 + lo) & below);
    xi = (xi & ~above) | ((v8i)(x * 0 + hi) & above);
    return (v8f)xi;
}

/* exp(x) = 2^n * e^t with n = round(x / ln 2), |t| <= ln(2) / 2; Taylor to
 * degree 6 (relative error about 2e-7). */
static inline v8f vexp(v8f x) {
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to integer */
    x = clamp(x, -87.0f, 88.0f);
    v8f big = x * 1.44269504f + magic;
    /* n from the integer bits, not big - magic: fast-math may fold that away. */
    v8i ni = (v8i)big - 0x4B400000;
    v8f t = x - __builtin_convertvector(ni, v8f) * 0.693147181f;
    v8f p = 1.0f + t * (1.0f + t * (0.5f + t * (1.0f / 6 + t * (1.0f / 24 +
            t * (1.0f / 120 + t * (1.0f / 720))))));
    v8i scale = (ni + 127) << 23;
    return p * (v8f)scale;
}

static inline v8f vsigmoid(v8f x) { return 1.0f / (1.0f + vexp(-x)); }

static inline v8f vtanh(v8f x) { return 2.0f / (1.0f + vexp(-2.0f * x)) - 1.0f; }

/* One cell, `ticks` updates from h_in/c_in into h_out/c_out; V = S / 8 vectors
 * per gate. V is a literal at the hot call sites so the loops unroll. */
static inline void cell_ticks(int V, int64_t ticks, const v8f *row, const v8f *col,
                              const float *w_h, const float *h_in, const float *c_in,
                              float *h_out, float *c_out) {
    v8f z[4 * MAX_V], hv[MAX_V], cv[MAX_V];
    const int S = 8 * V;
    for (int v = 0; v < V; v++) {
        hv[v] = ((const v8f *)h_in)[v];
        cv[v] = ((const v8f *)c_in)[v];
    }
    for (int64_t tick = 0; tick < ticks; tick++) {
        for (int j = 0; j < 4 * V; j++) z[j] = row[j] + col[j];
        for (int k = 0; k < S; k++) {
            const float hk = hv[k / 8][k % 8];
            const v8f *wk = (const v8f *)(w_h + k * 4 * S);
            for (int j = 0; j < 4 * V; j++) z[j] += hk * wk[j];
        }
        /* Gate order i, g, f, o; biases -5 (input) and +5 (forget). */
        for (int v = 0; v < V; v++) {
            v8f i = vsigmoid(z[v] - 5.0f);
            v8f g = vtanh(z[V + v]);
            v8f f = vsigmoid(z[2 * V + v] + 5.0f);
            v8f o = vsigmoid(z[3 * V + v]);
            cv[v] = f * cv[v] + i * g;
            hv[v] = o * vtanh(cv[v]);
        }
    }
    for (int v = 0; v < V; v++) {
        ((v8f *)h_out)[v] = hv[v];
        ((v8f *)c_out)[v] = cv[v];
    }
}

/* Update rows r in [begin, end) of the flattened (p, n, a) grid.
 *
 * fwd_in [P, N, A, M] incoming forward messages; col [P, N, B, 4S] backward
 * message terms (g[b] @ W_g); w [P, 2M + S, 4S] LSTM weights (x @ w layout);
 * bias [P, 4S]; h_in, c_in, h_out, c_out [P, N, A, B, S].
 * Also pools the new h for the read-outs: sum_b into pool_b [P, N, A, S] and
 * sum_a added into pool_a [P, N, B, S] (give each thread its own, zeroed).
 * All contiguous float32. Returns 0, or -1 unless S is a multiple of 8 <= 64.
 */
int vsml_dense_update(const float *fwd_in, const float *col, const float *w,
                      const float *bias, const float *h_in, const float *c_in,
                      float *h_out, float *c_out, float *pool_b, float *pool_a,
                      int64_t N, int64_t A, int64_t B, int64_t M, int64_t S,
                      int64_t ticks, int64_t begin, int64_t end) {
    if (S % 8 != 0 || S > MAX_S) return -1;
    const int64_t G = 4 * S;
    const int V = (int)(S / 8);
    v8f row[4 * MAX_V];
    for (int64_t r = begin; r < end; r++) {
        const int64_t p = r / (N * A), pn = r / A;
        const float *wp = w + p * (2 * M + S) * G;

        /* Forward-message term of this row: bias + f[a] @ W_f. */
        for (int j = 0; j < 4 * V; j++) row[j] = ((const v8f *)(bias + p * G))[j];
        for (int64_t m = 0; m < M; m++) {
            const float fm = fwd_in[r * M + m];
            if (fm == 0.0f) continue; /* input layers: only channel 0 is set */
            for (int j = 0; j < 4 * V; j++) row[j] += fm * ((const v8f *)(wp + m * G))[j];
        }

        const float *w_h = wp + 2 * M * G;
        for (int64_t b = 0; b < B; b++) {
            const int64_t cell = (r * B + b) * S;
            const v8f *cc = (const v8f *)(col + (pn * B + b) * G);
            if (V == 2)
                cell_ticks(2, ticks, row, cc, w_h, h_in + cell, c_in + cell,
                           h_out + cell, c_out + cell);
            else
                cell_ticks(V, ticks, row, cc, w_h, h_in + cell, c_in + cell,
                           h_out + cell, c_out + cell);
        }

        /* Pool the row's new states over b, and add them into the sum over a. */
        float *pb = pool_b + r * S;
        float *pa = pool_a + pn * B * S;
        for (int64_t s = 0; s < S; s++) pb[s] = 0.0f;
        for (int64_t b = 0; b < B; b++) {
            const float *hh = h_out + (r * B + b) * S;
            for (int64_t s = 0; s < S; s++) {
                pb[s] += hh[s];
                pa[b * S + s] += hh[s];
            }
        }
    }
    return 0;
}
