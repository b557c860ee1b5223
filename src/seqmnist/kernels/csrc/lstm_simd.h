/* The vectorised part of the LSTM kernel, written once against a small set of vector macros and
 * compiled once per instruction set by lstm.c (AVX-512 with 16 lanes, AVX2 + FMA with 8). Every
 * name defined here goes through FN(), which appends the instruction set's suffix.
 *
 * The including file defines: TARGET (the function attribute), FN(name), VW (lanes), NVMAX (the
 * most vectors of columns one block keeps in registers), the vector types V (float) and VI
 * (int32), the tail mask type M and the operations used below. */

/* exp(x) for float32 lanes: Cephes's expf polynomial after a two-constant range reduction. */
TARGET INLINE V FN(vexp)(V x)
{
    x = VMIN(VMAX(x, SET1(-87.0f)), SET1(87.0f));
    V n = VROUND(VMUL(x, SET1(1.44269504088896341f)));
    V r = FNMADD(n, SET1(0.693359375f), x);
    r = FNMADD(n, SET1(-2.12194440e-4f), r);
    V p = SET1(1.9875691500e-4f);
    p = FMADD(p, r, SET1(1.3981999507e-3f));
    p = FMADD(p, r, SET1(8.3334519073e-3f));
    p = FMADD(p, r, SET1(4.1665795894e-2f));
    p = FMADD(p, r, SET1(1.6666665459e-1f));
    p = FMADD(p, r, SET1(5.0000001201e-1f));
    p = FMADD(p, VMUL(r, r), VADD(r, SET1(1.0f)));
    return SCALE2N(p, n);
}

/* 1 / d for d >= 1: a hardware estimate refined by one Newton step (~1e-7 relative error),
 * several times cheaper than a division, which otherwise bounds the gate maths. */
TARGET INLINE V FN(vrecip)(V d)
{
    V r = RCP(d);
    return VMUL(r, FNMADD(d, r, SET1(2.0f)));
}

TARGET INLINE V FN(vsigmoid)(V x)
{
    return FN(vrecip)(VADD(SET1(1.0f), FN(vexp)(VSUB(ZERO(), x))));
}

TARGET INLINE V FN(vtanh)(V x) /* 2 sigmoid(2x) - 1 */
{
    V one = SET1(1.0f);
    V e = FN(vexp)(VMUL(x, SET1(-2.0f)));
    return FMSUB(SET1(2.0f), FN(vrecip)(VADD(one, e)), one);
}

/* out[r, :n] = init[r, :n] + sum_k a[r lda + k ak] w[k, :n] for R <= 4 rows and n <= VW NV
 * columns (ak = 1: rows of a; lda = 1: columns of a, i.e. a transposed). R and NV are
 * compile-time constants at every call, so the accumulators live in registers. init may be
 * out, or NULL for zero. */
TARGET INLINE void FN(block)(const int R, const int NV, int n, int K, const float *a, long lda,
                             long ak, const float *w, long ldw, const float *init, long ldi,
                             float *out, long ldo)
{
    V acc[4][NVMAX];
    M m[NVMAX];
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++)
        m[j] = TAIL(n - VW * j);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++)
            acc[r][j] = init ? LOADZ(m[j], init + r * ldi + VW * j) : ZERO();
    for (int k = 0; k < K; k++) {
        V wv[NVMAX];
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++)
            wv[j] = LOADZ(m[j], w + k * ldw + VW * j);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            V av = SET1(a[r * lda + k * ak]);
#pragma GCC unroll 4
            for (int j = 0; j < NV; j++)
                acc[r][j] = FMADD(av, wv[j], acc[r][j]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++)
            STOREM(out + r * ldo + VW * j, m[j], acc[r][j]);
}

#if NVMAX == 4
#define BLOCK_NV4(R) case 3: FN(block)(R, 3, n, K, a, lda, ak, w, ldw, init, ldi, out, ldo); break;
#else
#define BLOCK_NV4(R)
#endif
#define BLOCK_NV(R)                                                                         \
    switch ((n + VW - 1) / VW) {                                                            \
    case 1: FN(block)(R, 1, n, K, a, lda, ak, w, ldw, init, ldi, out, ldo); break;          \
    case 2: FN(block)(R, 2, n, K, a, lda, ak, w, ldw, init, ldi, out, ldo); break;          \
    BLOCK_NV4(R)                                                                            \
    default: FN(block)(R, NVMAX, n, K, a, lda, ak, w, ldw, init, ldi, out, ldo); break;     \
    }

/* out = init + a w for `rows` <= 4 rows of out and any number of columns N, in slabs of
 * VW NVMAX columns (a's element (r, k) at a[r lda + k ak]). */
TARGET static void FN(rows_product)(int rows, int N, int K, const float *a, long lda, long ak,
                                    const float *w0, long ldw, const float *init0, long ldi,
                                    float *out0, long ldo)
{
    for (int c = 0; c < N; c += VW * NVMAX) {
        int n = N - c < VW * NVMAX ? N - c : VW * NVMAX;
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
#undef BLOCK_NV
#undef BLOCK_NV4

/* out (M,N) += a^T b for a (K,M) and b (K,N) row-major with row strides lda, ldb: rank-K
 * updates of the weight gradients, one step's rows at a time while they are in L1. */
TARGET static void FN(add_at_b)(int Mr, int N, int K, const float *a, long lda, const float *b,
                                long ldb, float *out)
{
    for (int m0 = 0; m0 < Mr; m0 += 4) {
        int rows = Mr - m0 < 4 ? Mr - m0 : 4;
        FN(rows_product)(rows, N, K, a + m0, 1, lda, b, ldb, out + (long)m0 * N, N,
                         out + (long)m0 * N, N);
    }
}

/* Forward over all steps; see seqmnist_lstm_forward in lstm.c for the layouts. */
TARGET static void FN(lstm_forward)(int B, int T, int I, int H, const float *x, int x_batch_first,
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
            FN(rows_product)(rows, (int)G, I, x + t * x_step + b0 * x_row, x_row, 1, wih_t, G,
                             bias, 0, pre, G);
            if (t > 0)
                FN(rows_product)(rows, (int)G, H, h + (row0 - B) * H, H, 1, whh_t, G, pre, G,
                                 pre, G);
            for (long row = row0; row < row0 + rows; row++) {
                float *gt = gates + row * G;
                for (int j = 0; j < H; j += VW) {
                    M m = TAIL(H - j);
                    V i = FN(vsigmoid)(LOADZ(m, gt + j));
                    V f = FN(vsigmoid)(LOADZ(m, gt + H + j));
                    V g = FN(vtanh)(LOADZ(m, gt + 2 * H + j));
                    V o = FN(vsigmoid)(LOADZ(m, gt + 3 * H + j));
                    V cp = t > 0 ? LOADZ(m, c + (row - B) * H + j) : ZERO();
                    V cv = FMADD(f, cp, VMUL(i, g));
                    V tcv = FN(vtanh)(cv);
                    STOREM(gt + j, m, i);
                    STOREM(gt + H + j, m, f);
                    STOREM(gt + 2 * H + j, m, g);
                    STOREM(gt + 3 * H + j, m, o);
                    STOREM(c + row * H + j, m, cv);
                    STOREM(tc + row * H + j, m, tcv);
                    STOREM(h + row * H + j, m, VMUL(o, tcv));
                }
            }
        }
    }
}

/* Backward over all steps; see seqmnist_lstm_backward in lstm.c for the layouts. */
TARGET static void FN(lstm_backward)(int B, int T, int I, int H, const float *x,
                                     int x_batch_first, const float *wih, const float *whh,
                                     const float *gates, const float *c, const float *tc,
                                     const float *h, const float *dh_out, float *dx,
                                     const float *dx_mask, float *dwih, float *dwhh, float *db,
                                     float *work)
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
    const V one = SET1(1.0f);
    for (int t = T - 1; t >= 0; t--) {
        for (int b0 = 0; b0 < B; b0 += 4) {
            int rows = B - b0 < 4 ? B - b0 : 4;
            const long row0 = (long)t * B + b0;
            for (int r = 0; r < rows; r++) {
                const long b = b0 + r, row = row0 + r;
                const float *gt = gates + row * G;
                float *d = dg + b * G;
                for (int j = 0; j < H; j += VW) {
                    M m = TAIL(H - j);
                    V i = LOADZ(m, gt + j);
                    V f = LOADZ(m, gt + H + j);
                    V g = LOADZ(m, gt + 2 * H + j);
                    V o = LOADZ(m, gt + 3 * H + j);
                    V tcv = LOADZ(m, tc + row * H + j);
                    V cp = t > 0 ? LOADZ(m, c + (row - B) * H + j) : ZERO();
                    V dhv = LOADZ(m, dh + b * H + j);
                    V dcv = LOADZ(m, dc + b * H + j);
                    /* do = dh tanh(c) o (1 - o); dc += dh o (1 - tanh(c)^2) */
                    V dov = VMUL(VMUL(dhv, tcv), VMUL(o, VSUB(one, o)));
                    dcv = FMADD(VMUL(dhv, o), FNMADD(tcv, tcv, one), dcv);
                    V div = VMUL(VMUL(dcv, g), VMUL(i, VSUB(one, i)));
                    V dfv = VMUL(VMUL(dcv, cp), VMUL(f, VSUB(one, f)));
                    V dgv = VMUL(VMUL(dcv, i), FNMADD(g, g, one));
                    STOREM(d + j, m, div);
                    STOREM(d + H + j, m, dfv);
                    STOREM(d + 2 * H + j, m, dgv);
                    STOREM(d + 3 * H + j, m, dov);
                    STOREM(dc + b * H + j, m, VMUL(dcv, f));
                }
            }
            const float *d0 = dg + (long)b0 * G;
            /* dh for step t-1: its own output gradient plus dgates_t W_hh */
            if (t > 0)
                FN(rows_product)(rows, H, (int)G, d0, G, 1, whh, H, dh_out + (row0 - B) * H, H,
                                 dh + (long)b0 * H, H);
            if (dx) {
                float *dxr = dx + row0 * I;
                FN(rows_product)(rows, I, (int)G, d0, G, 1, wih, I, 0, 0, dxr, I);
                if (dx_mask)
                    for (long k = 0; k < (long)rows * I; k++)
                        dxr[k] *= dx_mask[row0 * I + k];
            }
        }
        /* weight and bias gradients: this step's gates against its inputs and h_{t-1} */
        FN(add_at_b)(I, (int)G, B, x + t * x_step, x_row, dg, G, dwih_t);
        if (t > 0)
            FN(add_at_b)(H, (int)G, B, h + (long)(t - 1) * B * H, H, dg, G, dwhh_t);
        for (int j = 0; j < G; j += VW) {
            M m = TAIL((int)G - j);
            V acc = LOADZ(m, db + j);
            for (int b = 0; b < B; b++)
                acc = VADD(acc, LOADZ(m, dg + (long)b * G + j));
            STOREM(db + j, m, acc);
        }
    }
    for (long g = 0; g < G; g++) {
        for (long k = 0; k < I; k++)
            dwih[g * I + k] = dwih_t[k * G + g];
        for (long k = 0; k < H; k++)
            dwhh[g * H + k] = dwhh_t[k * G + g];
    }
}

/* Inverted dropout; see seqmnist_dropout in lstm.c. The hash works on 32-bit lanes, so both
 * instruction sets draw exactly the same masks. */
TARGET static void FN(dropout)(long n, float p, unsigned long long seed, const float *x,
                               float *mask, float *y)
{
    const VI key = SET1I((int)(unsigned)(seed ^ (seed >> 32)));
    const VI key2 = SET1I((int)(unsigned)((seed >> 32) * 0x9E3779B9u));
    const V scale = SET1(1.0f / (1.0f - p)), pv = SET1(p);
    const VI lane = IOTA();
    for (long i = 0; i < n; i += VW) {
        M m = TAIL((int)(n - i < VW ? n - i : VW));
        VI h = ADDI(SET1I((int)i), lane);
        h = XORI(MULLOI(h, SET1I((int)0x9E3779B9u)), key);
        /* lowbias32 (C. Wellons), twice, keyed */
        for (int round = 0; round < 2; round++) {
            h = XORI(h, SRLI(h, 16));
            h = MULLOI(h, SET1I(0x7feb352d));
            h = XORI(h, SRLI(h, 15));
            h = MULLOI(h, SET1I((int)0x846ca68bu));
            h = XORI(h, SRLI(h, 16));
            h = XORI(h, key2);
        }
        V u = VMUL(CVTI(SRLI(h, 8)), SET1(1.0f / 16777216.0f));
        V mv = KEEP_GE(u, pv, scale); /* scale where u >= p, else 0 */
        STOREM(mask + i, m, mv);
        STOREM(y + i, m, VMUL(mv, LOADZ(m, x + i)));
    }
}
