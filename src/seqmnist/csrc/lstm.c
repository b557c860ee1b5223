/* LSTM layers on x86-64 CPUs with AVX-512, forward and backward, and the other pieces of an LSTM
 * classifier's training step (dropout, dense layer with softmax cross-entropy).
 *
 * A 50-unit LSTM at batch 32-64 is 28 steps of tiny products (32 x 78 by 78 x 200) with
 * element-wise gate maths between them; library kernels spend much of their time on per-step and
 * per-call overheads at this size. Here each step is register-blocked products (input and
 * recurrent projections) followed by the gate maths on the same rows while they are still in L1;
 * the backward pass accumulates the weight gradients step by step in the same way.
 *
 * Plain C with a C ABI (loaded with ctypes by lstm_kernel.py): no Python or PyTorch headers. Only
 * the functions marked TARGET use AVX-512; seqmnist_lstm_supported() tells the caller whether the
 * CPU has it. The functions are single-threaded and keep no state: callers run one per core.
 *
 * Layouts (row-major, float32): B batch, T steps, I input features, H hidden units, G = 4H gates
 * in PyTorch's order i, f, g, o. Initial hidden and cell states are zero.
 */
#include <immintrin.h>
#include <math.h>

#define TARGET __attribute__((target("avx512f,avx512dq,fma")))
#define INLINE static inline __attribute__((always_inline))

int seqmnist_lstm_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
}

/* exp(x) for float32 lanes: Cephes's expf polynomial after a two-constant range reduction. */
TARGET INLINE __m512 exp16(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* 1 / d for d >= 1: a 14-bit estimate refined by one Newton step (~1e-7 relative error),
 * several times cheaper than a division, which otherwise bounds the gate maths. */
TARGET INLINE __m512 recip16(__m512 d)
{
    __m512 r = _mm512_rcp14_ps(d);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
}

TARGET INLINE __m512 sigmoid16(__m512 x)
{
    __m512 one = _mm512_set1_ps(1.0f);
    return recip16(_mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

TARGET INLINE __m512 tanh16(__m512 x)  /* 2 sigmoid(2x) - 1 */
{
    __m512 one = _mm512_set1_ps(1.0f);
    __m512 e = exp16(_mm512_mul_ps(x, _mm512_set1_ps(-2.0f)));
    return _mm512_fmsub_ps(_mm512_set1_ps(2.0f), recip16(_mm512_add_ps(one, e)), one);
}

INLINE __mmask16 tail_mask(int remaining)
{
    return remaining >= 16 ? (__mmask16)0xFFFF
         : remaining <= 0 ? (__mmask16)0 : (__mmask16)((1u << remaining) - 1u);
}

/* out[r, :n] = init[r, :n] + sum_k a[r lda + k ak] w[k, :n] for R <= 4 rows and n <= 16 NV
 * columns (ak = 1: rows of a; lda = 1: columns of a, i.e. a transposed). R and NV are
 * compile-time constants at every call, so the accumulators live in registers. init may be
 * out, or NULL for zero. */
TARGET INLINE void block(const int R, const int NV, int n, int K, const float *a, long lda,
                         long ak, const float *w, long ldw, const float *init, long ldi,
                         float *out, long ldo)
{
    __m512 acc[4][4];
    __mmask16 m[4];
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++)
        m[j] = tail_mask(n - 16 * j);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++)
            acc[r][j] = init ? _mm512_maskz_loadu_ps(m[j], init + r * ldi + 16 * j)
                             : _mm512_setzero_ps();
    for (int k = 0; k < K; k++) {
        __m512 wv[4];
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++)
            wv[j] = _mm512_maskz_loadu_ps(m[j], w + k * ldw + 16 * j);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            __m512 av = _mm512_set1_ps(a[r * lda + k * ak]);
#pragma GCC unroll 4
            for (int j = 0; j < NV; j++)
                acc[r][j] = _mm512_fmadd_ps(av, wv[j], acc[r][j]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++)
            _mm512_mask_storeu_ps(out + r * ldo + 16 * j, m[j], acc[r][j]);
}

#define BLOCK_NV(R)                                                                         \
    switch ((n + 15) / 16) {                                                                \
    case 1: block(R, 1, n, K, a, lda, ak, w, ldw, init, ldi, out, ldo); break;              \
    case 2: block(R, 2, n, K, a, lda, ak, w, ldw, init, ldi, out, ldo); break;              \
    case 3: block(R, 3, n, K, a, lda, ak, w, ldw, init, ldi, out, ldo); break;              \
    default: block(R, 4, n, K, a, lda, ak, w, ldw, init, ldi, out, ldo); break;             \
    }

/* out = init + a w for `rows` <= 4 rows of out and any number of columns N, in 64-column slabs
 * (a's element (r, k) at a[r lda + k ak]). */
TARGET static void rows_product(int rows, int N, int K, const float *a, long lda, long ak,
                                const float *w0, long ldw, const float *init0, long ldi,
                                float *out0, long ldo)
{
    for (int c = 0; c < N; c += 64) {
        int n = N - c < 64 ? N - c : 64;
        const float *w = w0 + c, *init = init0 ? init0 + c : 0;
        float *out = out0 + c;
        switch (rows) {
        case 1: BLOCK_NV(1); break;
        case 2: BLOCK_NV(2); break;
        case 3: BLOCK_NV(3); break;
        default: BLOCK_NV(4); break;
        }
    }
}

/* out (M,N) += a^T b for a (K,M) and b (K,N) row-major with row strides lda, ldb: rank-K
 * updates of the weight gradients, one step's rows at a time while they are in L1. */
TARGET static void add_at_b(int M, int N, int K, const float *a, long lda, const float *b,
                            long ldb, float *out)
{
    for (int m0 = 0; m0 < M; m0 += 4) {
        int rows = M - m0 < 4 ? M - m0 : 4;
        rows_product(rows, N, K, a + m0, 1, lda, b, ldb, out + (long)m0 * N, N,
                     out + (long)m0 * N, N);
    }
}

/* Inputs x may be time-major (T,B,I) or batch-first (B,T,I): element (t, b, k) is at
 * x[t step + b row + k]. */
#define X_STRIDES(x_batch_first, B, T, I)                                                   \
    const long x_step = (x_batch_first) ? (long)(I) : (long)(B) * (I);                      \
    const long x_row = (x_batch_first) ? (long)(T) * (I) : (long)(I)

/* Forward over all steps. Outputs are time-major (T, B, ...), so each step's rows are
 * contiguous. wih (G,I), whh (G,H), b_ih, b_hh (G): PyTorch's LSTM parameters (gates i f g o).
 * work: (I + H) G + G floats. Outputs: gates (T,B,G) activated; c (T,B,H) cell states;
 * tc (T,B,H) tanh(c); h (T,B,H) hidden states. Each step: x_t W_ih^T + b + h_{t-1} W_hh^T
 * (h_{-1} = 0), then the gate maths on the same rows while they are in L1. */
TARGET void seqmnist_lstm_forward(int B, int T, int I, int H, const float *x, int x_batch_first,
                                  const float *wih, const float *whh, const float *b_ih,
                                  const float *b_hh, float *work, float *gates, float *c,
                                  float *tc, float *h)
{
    const long G = 4L * H;
    X_STRIDES(x_batch_first, B, T, I);
    float *wih_t = work, *whh_t = work + I * G, *bias = work + (I + H) * G;
    for (long g = 0; g < G; g++) {
        for (long k = 0; k < I; k++)
            wih_t[k * G + g] = wih[g * I + k];
        for (long k = 0; k < H; k++)
            whh_t[k * G + g] = whh[g * H + k];
        bias[g] = b_ih[g] + b_hh[g];
    }
    for (int t = 0; t < T; t++) {
        for (int b0 = 0; b0 < B; b0 += 4) {
            int rows = B - b0 < 4 ? B - b0 : 4;
            const long row0 = (long)t * B + b0;
            float *pre = gates + row0 * G;
            rows_product(rows, (int)G, I, x + t * x_step + b0 * x_row, x_row, 1, wih_t, G,
                         bias, 0, pre, G);
            if (t > 0)
                rows_product(rows, (int)G, H, h + (row0 - B) * H, H, 1, whh_t, G, pre, G, pre, G);
            for (long row = row0; row < row0 + rows; row++) {
                float *gt = gates + row * G;
                for (int j = 0; j < H; j += 16) {
                    __mmask16 m = tail_mask(H - j);
                    __m512 i = sigmoid16(_mm512_maskz_loadu_ps(m, gt + j));
                    __m512 f = sigmoid16(_mm512_maskz_loadu_ps(m, gt + H + j));
                    __m512 g = tanh16(_mm512_maskz_loadu_ps(m, gt + 2 * H + j));
                    __m512 o = sigmoid16(_mm512_maskz_loadu_ps(m, gt + 3 * H + j));
                    __m512 cp = t > 0 ? _mm512_maskz_loadu_ps(m, c + (row - B) * H + j)
                                      : _mm512_setzero_ps();
                    __m512 cv = _mm512_fmadd_ps(f, cp, _mm512_mul_ps(i, g));
                    __m512 tcv = tanh16(cv);
                    _mm512_mask_storeu_ps(gt + j, m, i);
                    _mm512_mask_storeu_ps(gt + H + j, m, f);
                    _mm512_mask_storeu_ps(gt + 2 * H + j, m, g);
                    _mm512_mask_storeu_ps(gt + 3 * H + j, m, o);
                    _mm512_mask_storeu_ps(c + row * H + j, m, cv);
                    _mm512_mask_storeu_ps(tc + row * H + j, m, tcv);
                    _mm512_mask_storeu_ps(h + row * H + j, m, _mm512_mul_ps(o, tcv));
                }
            }
        }
    }
}

/* Backward over all steps, from the forward's inputs and outputs. dh_out (T,B,H): gradient of
 * the loss w.r.t. h. Outputs: dx (T,B,I), time-major, times dx_mask (T,B,I) when given (a
 * dropout's mask), skipped when dx is NULL; dwih (G,I), dwhh (G,H), db (G): the gradients of
 * the weights in PyTorch's layout. work: (I + H) G + B G + 2 B H floats. */
TARGET void seqmnist_lstm_backward(int B, int T, int I, int H, const float *x, int x_batch_first,
                                   const float *wih, const float *whh, const float *gates,
                                   const float *c, const float *tc, const float *h,
                                   const float *dh_out, float *dx, const float *dx_mask,
                                   float *dwih, float *dwhh, float *db, float *work)
{
    const long G = 4L * H;
    X_STRIDES(x_batch_first, B, T, I);
    float *dwih_t = work, *dwhh_t = work + I * G, *dg = work + (I + H) * G;
    float *dh = dg + B * G, *dc = dh + (long)B * H;
    for (long k = 0; k < (long)B * H; k++) {
        dh[k] = dh_out[(long)(T - 1) * B * H + k];
        dc[k] = 0.0f;
    }
    for (long k = 0; k < (I + H) * G; k++)
        work[k] = 0.0f;
    for (long k = 0; k < G; k++)
        db[k] = 0.0f;
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int t = T - 1; t >= 0; t--) {
        for (int b0 = 0; b0 < B; b0 += 4) {
            int rows = B - b0 < 4 ? B - b0 : 4;
            const long row0 = (long)t * B + b0;
            for (int r = 0; r < rows; r++) {
                const long b = b0 + r, row = row0 + r;
                const float *gt = gates + row * G;
                float *d = dg + b * G;
                for (int j = 0; j < H; j += 16) {
                    __mmask16 m = tail_mask(H - j);
                    __m512 i = _mm512_maskz_loadu_ps(m, gt + j);
                    __m512 f = _mm512_maskz_loadu_ps(m, gt + H + j);
                    __m512 g = _mm512_maskz_loadu_ps(m, gt + 2 * H + j);
                    __m512 o = _mm512_maskz_loadu_ps(m, gt + 3 * H + j);
                    __m512 tcv = _mm512_maskz_loadu_ps(m, tc + row * H + j);
                    __m512 cp = t > 0 ? _mm512_maskz_loadu_ps(m, c + (row - B) * H + j)
                                      : _mm512_setzero_ps();
                    __m512 dhv = _mm512_maskz_loadu_ps(m, dh + b * H + j);
                    __m512 dcv = _mm512_maskz_loadu_ps(m, dc + b * H + j);
                    /* do = dh tanh(c) o (1 - o); dc += dh o (1 - tanh(c)^2) */
                    __m512 dov = _mm512_mul_ps(_mm512_mul_ps(dhv, tcv),
                                               _mm512_mul_ps(o, _mm512_sub_ps(one, o)));
                    dcv = _mm512_fmadd_ps(_mm512_mul_ps(dhv, o),
                                          _mm512_fnmadd_ps(tcv, tcv, one), dcv);
                    __m512 div = _mm512_mul_ps(_mm512_mul_ps(dcv, g),
                                               _mm512_mul_ps(i, _mm512_sub_ps(one, i)));
                    __m512 dfv = _mm512_mul_ps(_mm512_mul_ps(dcv, cp),
                                               _mm512_mul_ps(f, _mm512_sub_ps(one, f)));
                    __m512 dgv = _mm512_mul_ps(_mm512_mul_ps(dcv, i), _mm512_fnmadd_ps(g, g, one));
                    _mm512_mask_storeu_ps(d + j, m, div);
                    _mm512_mask_storeu_ps(d + H + j, m, dfv);
                    _mm512_mask_storeu_ps(d + 2 * H + j, m, dgv);
                    _mm512_mask_storeu_ps(d + 3 * H + j, m, dov);
                    _mm512_mask_storeu_ps(dc + b * H + j, m, _mm512_mul_ps(dcv, f));
                }
            }
            const float *d0 = dg + (long)b0 * G;
            /* dh for step t-1: its own output gradient plus dgates_t W_hh */
            if (t > 0)
                rows_product(rows, H, (int)G, d0, G, 1, whh, H, dh_out + (row0 - B) * H, H,
                             dh + (long)b0 * H, H);
            if (dx) {
                float *dxr = dx + row0 * I;
                rows_product(rows, I, (int)G, d0, G, 1, wih, I, 0, 0, dxr, I);
                if (dx_mask)
                    for (long k = 0; k < (long)rows * I; k++)
                        dxr[k] *= dx_mask[row0 * I + k];
            }
        }
        /* weight and bias gradients: this step's gates against its inputs and h_{t-1} */
        add_at_b(I, (int)G, B, x + t * x_step, x_row, dg, G, dwih_t);
        if (t > 0)
            add_at_b(H, (int)G, B, h + (long)(t - 1) * B * H, H, dg, G, dwhh_t);
        for (int j = 0; j < G; j += 16) {
            __mmask16 m = tail_mask((int)G - j);
            __m512 acc = _mm512_maskz_loadu_ps(m, db + j);
            for (int b = 0; b < B; b++)
                acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(m, dg + (long)b * G + j));
            _mm512_mask_storeu_ps(db + j, m, acc);
        }
    }
    for (long g = 0; g < G; g++) {
        for (long k = 0; k < I; k++)
            dwih[g * I + k] = dwih_t[k * G + g];
        for (long k = 0; k < H; k++)
            dwhh[g * H + k] = dwhh_t[k * G + g];
    }
}

/* Inverted dropout: mask[i] = (u_i >= p) / (1 - p), y = x mask, with u_i uniform in [0, 1) from a
 * counter-based hash of (seed, i): reproducible, and independent of threads and batch layout. */
TARGET void seqmnist_dropout(long n, float p, unsigned long long seed, const float *x,
                             float *mask, float *y)
{
    const __m512i key = _mm512_set1_epi32((int)(unsigned)(seed ^ (seed >> 32)));
    const __m512i key2 = _mm512_set1_epi32((int)(unsigned)((seed >> 32) * 0x9E3779B9u));
    const __m512 scale = _mm512_set1_ps(1.0f / (1.0f - p)), pv = _mm512_set1_ps(p);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (long i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask((int)(n - i < 16 ? n - i : 16));
        __m512i h = _mm512_add_epi32(_mm512_set1_epi32((int)i), lane);
        h = _mm512_xor_si512(_mm512_mullo_epi32(h, _mm512_set1_epi32((int)0x9E3779B9u)), key);
        /* lowbias32 (C. Wellons), twice, keyed */
        for (int round = 0; round < 2; round++) {
            h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
            h = _mm512_mullo_epi32(h, _mm512_set1_epi32(0x7feb352d));
            h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 15));
            h = _mm512_mullo_epi32(h, _mm512_set1_epi32((int)0x846ca68bu));
            h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
            h = _mm512_xor_si512(h, key2);
        }
        __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(h, 8)),
                                 _mm512_set1_ps(1.0f / 16777216.0f));
        __mmask16 keep = _mm512_cmp_ps_mask(u, pv, _CMP_GE_OQ);
        __m512 mv = _mm512_maskz_mov_ps(keep, scale);
        _mm512_mask_storeu_ps(mask + i, m, mv);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(mv, _mm512_maskz_loadu_ps(m, x + i)));
    }
}

/* Dense layer with softmax cross-entropy, forward and backward for B rows: h (B,K), w (C,K),
 * b (C), labels (B). Gradients of (sum of the row losses) * scale: dw (C,K), db (C), dh (B,K).
 * Returns the loss summed over the rows; *correct counts rows whose largest logit is the label. */
double seqmnist_dense_softmax_ce(int B, int K, int C, const float *h, const float *w,
                                 const float *b, const long long *labels, float scale,
                                 float *dw, float *db, float *dh, long long *correct)
{
    float logits[256]; /* C <= 256: checked by the caller */
    double loss = 0.0;
    long long hits = 0;
    for (long i = 0; i < (long)C * K; i++)
        dw[i] = 0.0f;
    for (int c = 0; c < C; c++)
        db[c] = 0.0f;
    for (int r = 0; r < B; r++) {
        const float *hr = h + (long)r * K;
        int best = 0;
        for (int c = 0; c < C; c++) {
            float s = b[c];
            for (int k = 0; k < K; k++)
                s += hr[k] * w[(long)c * K + k];
            logits[c] = s;
            if (s > logits[best])
                best = c;
        }
        int y = (int)labels[r];
        float mx = logits[best], ly = logits[y], sum = 0.0f;
        for (int c = 0; c < C; c++) {
            logits[c] = expf(logits[c] - mx);
            sum += logits[c];
        }
        loss += (double)logf(sum) + (double)mx - (double)ly;
        hits += best == y;
        float *dhr = dh + (long)r * K;
        for (int k = 0; k < K; k++)
            dhr[k] = 0.0f;
        for (int c = 0; c < C; c++) {
            float g = (logits[c] / sum - (c == y ? 1.0f : 0.0f)) * scale;
            db[c] += g;
            for (int k = 0; k < K; k++) {
                dw[(long)c * K + k] += g * hr[k];
                dhr[k] += g * w[(long)c * K + k];
            }
        }
    }
    *correct = hits;
    return loss;
}
