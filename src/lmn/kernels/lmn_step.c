/* One streaming step of an LMN (expand = 0) in plain C: the whole model, every layer,
 * for a batch of independent streams, with no allocation and no framework dispatch.
 *
 * Compiled on first use by lmn.native (cc -O3 -shared -DREAL=float or double); the
 * Python side packs the weights into one flat array in the order read below and checks
 * every argument before the call. The computation is the one of LMN.step in lmn/model.py:
 *
 *   x = RMSNorm1(h); binary-counter update of the per-level nodes (summarizer as one
 *   affine map of [left; right], projected once into the slot cache); single-vector
 *   attention over [x, cached slots]; h += W_o(...); h += FF(RMSNorm2(h)); at the end
 *   logits = head(LayerNorm(h)).
 *
 * Layouts (row-major; C = n_banks * d, node vectors bank-major):
 *   weights: emb (V, d) | per layer: n1 (d), sum_W (2C, C), sum_b (C), qkv_W (d, 3d),
 *            qkv_b (3d), o_W (d, d), o_b (d), n2 (d), up_W (d, F), up_b (F), down_W (F, d),
 *            down_b (d) | lnf_w (d), lnf_b (d), head_W (d, V), head_b (V)
 *   (every matrix transposed against torch's Linear layout: input-major)
 *   state, per stream and layer: nodes (levels + 1, C) | slot_q (levels * n_banks, d) |
 *            slot_v (levels * n_banks, d); slots of level i, bank b at row (i-1)*n_banks + b
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef REAL
#define REAL float
#endif

typedef REAL real;

enum { D_VOCAB, D_MODEL, D_LAYERS, D_HEADS, D_BANKS, D_FF, D_LEVELS, D_SINUSOIDAL, D_COUNT };

/* y[o] = b[o] + sum_i x[i] Wt[i, o], with Wt stored input-major (row stride ld): the
 * inner loop runs over contiguous outputs, so the compiler vectorises it without
 * reordering any sum (each y[o] still adds its terms in the order i = 0, 1, ...). */
static void matvec(const real *Wt, int64_t ld, const real *b, const real *x, real *y, int64_t n_out,
                   int64_t n_in) {
    memcpy(y, b, (size_t)n_out * sizeof(real));
    for (int64_t i = 0; i < n_in; ++i) {
        const real xi = x[i], *w = Wt + i * ld;
        for (int64_t o = 0; o < n_out; ++o) y[o] += xi * w[o];
    }
}

static void rms_norm(const real *h, const real *w, real eps, real *x, int64_t d) {
    real ss = 0;
    for (int64_t j = 0; j < d; ++j) ss += h[j] * h[j];
    real inv = (real)1 / (real)sqrt((double)(ss / (real)d + eps));
    for (int64_t j = 0; j < d; ++j) x[j] = h[j] * inv * w[j];
}

static int64_t work_size(const int64_t *dims) {
    int64_t d = dims[D_MODEL], C = dims[D_BANKS] * d;
    /* h, x, attn out, y | cur, merged | pair | qkv | ff hidden | scores */
    return 4 * d + 2 * C + 2 * C + 3 * d + dims[D_FF] + 1 + dims[D_LEVELS] * dims[D_BANKS];
}

int64_t lmn_work_size(const int64_t *dims) { return work_size(dims); }

/* Returns 0, or -(1 + r) if stream r's token id is outside [0, vocab). */
int64_t lmn_step(const real *weights, real *state, real *work, const int64_t *tokens, real *logits,
                 int64_t batch, int64_t pos, const int64_t *dims, const double *eps) {
    const int64_t V = dims[D_VOCAB], d = dims[D_MODEL], n_layers = dims[D_LAYERS];
    const int64_t H = dims[D_HEADS], nb = dims[D_BANKS], F = dims[D_FF], Lcap = dims[D_LEVELS];
    const int64_t C = nb * d, dh = d / H;
    const int64_t layer_w = d + 2 * C * C + C + 3 * d * d + 3 * d + d * d + d + d + F * d + F + d * F + d;
    const int64_t layer_s = (Lcap + 1) * C + 2 * Lcap * nb * d;
    const real scale = (real)(1.0 / sqrt((double)dh));
    const int64_t count = pos + 1;

    for (int64_t r = 0; r < batch; ++r)
        if (tokens[r] < 0 || tokens[r] >= V) return -(1 + r);

    /* levels present after this token, and the levels it completes (trailing zeros) */
    int64_t L = 0, tz = 0;
    while ((count >> (L + 1)) != 0) ++L;
    if (count > 1)
        while (((count >> tz) & 1) == 0) ++tz;

    real *h = work, *x = h + d, *att = x + d, *y = att + d;
    real *cur = y + d, *merged = cur + C, *pair = merged + C, *qkv = pair + 2 * C;
    real *hid = qkv + 3 * d, *sc = hid + F;

    for (int64_t r = 0; r < batch; ++r) {
        const real *w = weights;
        memcpy(h, w + tokens[r] * d, (size_t)d * sizeof(real));
        w += V * d;
        if (dims[D_SINUSOIDAL]) {
            const double base = -2.0 * log(10000.0) / (double)d;
            for (int64_t j = 0; j < d; ++j) {
                double a = (double)pos * exp((double)(j / 2) * base);
                h[j] += (real)((j % 2 == 0) ? sin(a) : cos(a));
            }
        }
        for (int64_t l = 0; l < n_layers; ++l) {
            const real *n1 = w, *sW = n1 + d, *sb = sW + 2 * C * C, *qW = sb + C, *qb = qW + 3 * d * d;
            const real *oW = qb + 3 * d, *ob = oW + d * d, *n2 = ob + d, *uW = n2 + d, *ub = uW + F * d;
            const real *dW = ub + F, *db = dW + d * F;
            w += layer_w;
            real *nodes = state + (r * n_layers + l) * layer_s;
            real *sq = nodes + (Lcap + 1) * C, *sv = sq + Lcap * nb * d;

            rms_norm(h, n1, (real)eps[2 * l], x, d);

            /* binary counter: level-0 node = x in every bank; token `count` completes a
               node at levels 1..tz, each merging the previous latest node of the level
               below with the one completed now */
            for (int64_t b = 0; b < nb; ++b) memcpy(cur + b * d, x, (size_t)d * sizeof(real));
            for (int64_t i = 1; i <= tz; ++i) {
                memcpy(pair, nodes + (i - 1) * C, (size_t)C * sizeof(real));
                memcpy(pair + C, cur, (size_t)C * sizeof(real));
                matvec(sW, C, sb, pair, merged, C, 2 * C);
                memcpy(nodes + (i - 1) * C, cur, (size_t)C * sizeof(real));
                memcpy(cur, merged, (size_t)C * sizeof(real));
                for (int64_t b = 0; b < nb; ++b) { /* project the new node once: W_q, W_v */
                    int64_t row = (i - 1) * nb + b;
                    matvec(qW, 3 * d, qb, cur + b * d, sq + row * d, d, d);
                    matvec(qW + 2 * d, 3 * d, qb + 2 * d, cur + b * d, sv + row * d, d, d);
                }
            }
            memcpy(nodes + tz * C, cur, (size_t)C * sizeof(real));

            /* single-vector attention over [x itself, nb * L cached slots] */
            matvec(qW, 3 * d, qb, x, qkv, 3 * d, d);
            const real *q = qkv, *k = qkv + d, *v = qkv + 2 * d;
            const int64_t S = L * nb;
            for (int64_t hd = 0; hd < H; ++hd) {
                const int64_t o = hd * dh;
                real s0 = 0;
                for (int64_t j = 0; j < dh; ++j) s0 += q[o + j] * k[o + j];
                sc[0] = s0 * scale;
                real mx = sc[0];
                for (int64_t s = 0; s < S; ++s) {
                    real acc = 0;
                    for (int64_t j = 0; j < dh; ++j) acc += sq[s * d + o + j] * k[o + j];
                    sc[1 + s] = acc * scale;
                    if (sc[1 + s] > mx) mx = sc[1 + s];
                }
                real total = 0;
                for (int64_t s = 0; s <= S; ++s) {
                    sc[s] = (real)exp((double)(sc[s] - mx));
                    total += sc[s];
                }
                for (int64_t j = 0; j < dh; ++j) {
                    real acc = sc[0] * v[o + j];
                    for (int64_t s = 0; s < S; ++s) acc += sc[1 + s] * sv[s * d + o + j];
                    att[o + j] = acc / total;
                }
            }
            matvec(oW, d, ob, att, y, d, d);
            for (int64_t j = 0; j < d; ++j) h[j] += y[j];

            /* feed-forward */
            rms_norm(h, n2, (real)eps[2 * l + 1], y, d);
            matvec(uW, F, ub, y, hid, F, d);
            for (int64_t j = 0; j < F; ++j) hid[j] = hid[j] / ((real)1 + (real)exp(-(double)hid[j]));
            matvec(dW, d, db, hid, y, d, F);
            for (int64_t j = 0; j < d; ++j) h[j] += y[j];
        }
        /* final LayerNorm and head */
        const real *lw = w, *lb = lw + d, *hW = lb + d, *hb = hW + V * d;
        real mean = 0, var = 0;
        for (int64_t j = 0; j < d; ++j) mean += h[j];
        mean /= (real)d;
        for (int64_t j = 0; j < d; ++j) var += (h[j] - mean) * (h[j] - mean);
        var /= (real)d;
        real inv = (real)1 / (real)sqrt((double)(var + (real)eps[2 * n_layers]));
        for (int64_t j = 0; j < d; ++j) x[j] = (h[j] - mean) * inv * lw[j] + lb[j];
        matvec(hW, V, hb, x, logits + r * V, V, d);
    }
    return 0;
}
