/* LSTM layers on x86-64 CPUs with AVX-512 or AVX2, forward and backward, and the other pieces of
 * an LSTM classifier's training step (dropout, dense layer with softmax cross-entropy).
 *
 * A 50-unit LSTM at batch 32-64 is 28 steps of tiny products (32 x 78 by 78 x 200) with
 * element-wise gate maths between them; library kernels spend much of their time on per-step and
 * per-call overheads at this size. Here each step is register-blocked products (input and
 * recurrent projections) followed by the gate maths on the same rows while they are still in L1;
 * the backward pass accumulates the weight gradients step by step in the same way.
 *
 * Plain C with a C ABI, built as a plain shared library (libseqmnist_lstm.so) and loaded with
 * ctypes by lstm_kernel.py: no Python or PyTorch headers. The vector code is written once
 * (lstm_simd.h) and compiled twice below, for AVX-512 (16 lanes) and for AVX2 + FMA (8 lanes);
 * seqmnist_lstm_isa() tells the caller which one this CPU runs (0: neither, and the caller must
 * not call the kernels). The functions are single-threaded and keep no state: callers run one per
 * core. The caller checks every shape, type and label (lstm_kernel.py); the one value checked
 * here again is the label range, since an out-of-range label would index outside the logits.
 *
 * Layouts (row-major, float32): B batch, T steps, I input features, H hidden units, G = 4H gates
 * in PyTorch's order i, f, g, o. Initial hidden and cell states are zero.
 */
#if !defined(__x86_64__) && !defined(_M_X64)
#error "seqmnist's LSTM kernel is x86-64 only; other CPUs use the torch backend"
#endif
#include <immintrin.h>
#include <math.h>

#define INLINE static inline __attribute__((always_inline))
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define FN(name) CAT(name, SUFFIX)

/* Inputs x may be time-major (T,B,I) or batch-first (B,T,I): element (t, b, k) is at
 * x[t step + b row + k]. */
#define X_STRIDES(x_batch_first, B, T, I)                                                   \
    const long x_step = (x_batch_first) ? (long)(I) : (long)(B) * (I);                      \
    const long x_row = (x_batch_first) ? (long)(T) * (I) : (long)(I)

/* ---- AVX-512: 16 lanes, mask registers for the tails ---------------------------------- */
#define TARGET __attribute__((target("avx512f,avx512dq,fma")))
#define SUFFIX _avx512
#define VW 16
#define NVMAX 4
#define V __m512
#define VI __m512i
#define M __mmask16
#define SET1 _mm512_set1_ps
#define ZERO _mm512_setzero_ps
#define VADD _mm512_add_ps
#define VSUB _mm512_sub_ps
#define VMUL _mm512_mul_ps
#define VMIN _mm512_min_ps
#define VMAX _mm512_max_ps
#define FMADD _mm512_fmadd_ps
#define FNMADD _mm512_fnmadd_ps
#define FMSUB _mm512_fmsub_ps
#define VROUND(x) _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define SCALE2N _mm512_scalef_ps
#define RCP _mm512_rcp14_ps
#define LOADZ _mm512_maskz_loadu_ps
#define STOREM _mm512_mask_storeu_ps
#define SET1I _mm512_set1_epi32
#define ADDI _mm512_add_epi32
#define XORI _mm512_xor_si512
#define MULLOI _mm512_mullo_epi32
#define SRLI _mm512_srli_epi32
#define CVTI _mm512_cvtepi32_ps
#define IOTA() _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#define KEEP_GE(u, p, s) _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(u, p, _CMP_GE_OQ), s)
INLINE __mmask16 tail_avx512(int remaining)
{
    return remaining >= 16 ? (__mmask16)0xFFFF
         : remaining <= 0 ? (__mmask16)0 : (__mmask16)((1u << remaining) - 1u);
}
#define TAIL tail_avx512
#include "lstm_simd.h"
#undef TARGET
#undef SUFFIX
#undef VW
#undef NVMAX
#undef V
#undef VI
#undef M
#undef SET1
#undef ZERO
#undef VADD
#undef VSUB
#undef VMUL
#undef VMIN
#undef VMAX
#undef FMADD
#undef FNMADD
#undef FMSUB
#undef VROUND
#undef SCALE2N
#undef RCP
#undef LOADZ
#undef STOREM
#undef SET1I
#undef ADDI
#undef XORI
#undef MULLOI
#undef SRLI
#undef CVTI
#undef IOTA
#undef KEEP_GE
#undef TAIL

/* ---- AVX2 + FMA: 8 lanes, sign-bit integer masks for the tails (16 vector registers, so
 * blocks hold at most 3 vectors of columns: 12 accumulators) ------------------------------ */
#define TARGET __attribute__((target("avx2,fma")))
#define SUFFIX _avx2
#define VW 8
#define NVMAX 3
#define V __m256
#define VI __m256i
#define M __m256i
#define SET1 _mm256_set1_ps
#define ZERO _mm256_setzero_ps
#define VADD _mm256_add_ps
#define VSUB _mm256_sub_ps
#define VMUL _mm256_mul_ps
#define VMIN _mm256_min_ps
#define VMAX _mm256_max_ps
#define FMADD _mm256_fmadd_ps
#define FNMADD _mm256_fnmadd_ps
#define FMSUB _mm256_fmsub_ps
#define VROUND(x) _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
/* p 2^n for whole n in [-126, 127] (x is clamped to +-87 first): build 2^n's exponent bits */
#define SCALE2N(p, n)                                                                       \
    _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(                                 \
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23)))
#define RCP _mm256_rcp_ps
#define LOADZ(m, p) _mm256_maskload_ps(p, m)
#define STOREM(p, m, v) _mm256_maskstore_ps(p, m, v)
#define SET1I _mm256_set1_epi32
#define ADDI _mm256_add_epi32
#define XORI _mm256_xor_si256
#define MULLOI _mm256_mullo_epi32
#define SRLI _mm256_srli_epi32
#define CVTI _mm256_cvtepi32_ps
#define IOTA() _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)
#define KEEP_GE(u, p, s) _mm256_and_ps(_mm256_cmp_ps(u, p, _CMP_GE_OQ), s)
__attribute__((target("avx2,fma"))) INLINE __m256i tail_avx2(int remaining)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(remaining), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#define TAIL tail_avx2
#include "lstm_simd.h"

/* ---- the entry points: the best instruction set this CPU has ---------------------------- */

/* 2: AVX-512, 1: AVX2 + FMA, 0: neither (do not call the kernels). */
int seqmnist_lstm_isa(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 1;
    return 0;
}

static int cached_isa = -1;

static int isa(void)
{
    if (cached_isa < 0)
        cached_isa = seqmnist_lstm_isa();
    return cached_isa;
}

/* Run the kernels with at most instruction set `most` (2: AVX-512, 1: AVX2 + FMA) even where the
 * CPU has more: the AVX2 code tested and measured on an AVX-512 machine. 0 changes nothing.
 * Returns the set in use. Not to be called while a kernel runs in another thread. */
int seqmnist_lstm_limit_isa(int most)
{
    int have = seqmnist_lstm_isa();
    if (most > 0)
        cached_isa = most < have ? most : have;
    return isa();
}

/* Forward over all steps. Outputs are time-major (T, B, ...), so each step's rows are
 * contiguous. wih (G,I), whh (G,H), b_ih, b_hh (G): PyTorch's LSTM parameters (gates i f g o).
 * work: (I + H) G + G floats. Outputs: gates (T,B,G) activated; c (T,B,H) cell states;
 * tc (T,B,H) tanh(c); h (T,B,H) hidden states. Each step: x_t W_ih^T + b + h_{t-1} W_hh^T
 * (h_{-1} = 0), then the gate maths on the same rows while they are in L1. */
void seqmnist_lstm_forward(int B, int T, int I, int H, const float *x, int x_batch_first,
                           const float *wih, const float *whh, const float *b_ih,
                           const float *b_hh, float *work, float *gates, float *c, float *tc,
                           float *h)
{
    if (isa() == 2)
        lstm_forward_avx512(B, T, I, H, x, x_batch_first, wih, whh, b_ih, b_hh, work, gates, c,
                            tc, h);
    else if (isa() == 1)
        lstm_forward_avx2(B, T, I, H, x, x_batch_first, wih, whh, b_ih, b_hh, work, gates, c,
                          tc, h);
}

/* Backward over all steps, from the forward's inputs and outputs. dh_out (T,B,H): gradient of
 * the loss w.r.t. h. Outputs: dx (T,B,I), time-major, times dx_mask (T,B,I) when given (a
 * dropout's mask), skipped when dx is NULL; dwih (G,I), dwhh (G,H), db (G): the gradients of
 * the weights in PyTorch's layout. work: (I + H) G + B G + 2 B H floats. */
void seqmnist_lstm_backward(int B, int T, int I, int H, const float *x, int x_batch_first,
                            const float *wih, const float *whh, const float *gates,
                            const float *c, const float *tc, const float *h,
                            const float *dh_out, float *dx, const float *dx_mask, float *dwih,
                            float *dwhh, float *db, float *work)
{
    if (isa() == 2)
        lstm_backward_avx512(B, T, I, H, x, x_batch_first, wih, whh, gates, c, tc, h, dh_out,
                             dx, dx_mask, dwih, dwhh, db, work);
    else if (isa() == 1)
        lstm_backward_avx2(B, T, I, H, x, x_batch_first, wih, whh, gates, c, tc, h, dh_out, dx,
                           dx_mask, dwih, dwhh, db, work);
}

/* Inverted dropout: mask[i] = (u_i >= p) / (1 - p), y = x mask, with u_i uniform in [0, 1) from a
 * counter-based hash of (seed, i): reproducible, and independent of threads, batch layout and
 * instruction set. */
void seqmnist_dropout(long n, float p, unsigned long long seed, const float *x, float *mask,
                      float *y)
{
    if (isa() == 2)
        dropout_avx512(n, p, seed, x, mask, y);
    else if (isa() == 1)
        dropout_avx2(n, p, seed, x, mask, y);
}

/* Dense layer with softmax cross-entropy, forward and backward for B rows: h (B,K), w (C,K),
 * b (C), labels (B). Gradients of (sum of the row losses) * scale: dw (C,K), db (C), dh (B,K).
 * Returns the loss summed over the rows; *correct counts rows whose largest logit is the label.
 * Returns -1 without touching anything when C is out of 1..256 or a label is outside 0..C-1. */
double seqmnist_dense_softmax_ce(int B, int K, int C, const float *h, const float *w,
                                 const float *b, const long long *labels, float scale,
                                 float *dw, float *db, float *dh, long long *correct)
{
    float logits[256];
    double loss = 0.0;
    if (C < 1 || C > 256)
        return -1.0;
    for (int r = 0; r < B; r++)
        if (labels[r] < 0 || labels[r] >= C)
            return -1.0;
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
