/* One streaming step of an LMN (expand = 0) in plain C: the whole model, every layer,
 * for a batch of independent streams, with no allocation and no framework dispatch.
 *
 * Compiled on first use by lmn.native (cc -O3 -shared -DREAL=float or double); the
 * Python side packs the weights into one flat array in the order read below and checks
 * every argument before the call. The computation is the one of LMN.step in lmn/model.py:
 *
 *   x = RMSNorm1(h); base-k counter update of the per-level nodes (summarizer as one
 *   affine map of its k children, each new node projected once into the slot store);
 *   single-vector attention over [x, the slots the read rule selects]; h += W_o(...);
 *   h += FF(RMSNorm2(h)); at the end logits = head(LayerNorm(h)).
 *
 * The tree's arithmetic is not repeated here: lmn.tree.Counter hands every step its plan
 *   plan = [top, L, d_0, d_1, ..., d_cap]
 * top: the levels this token completes (its carry height; levels + 1 when a tree capped
 * at max_level = levels carries past its top); L: levels >= 1 present after it; d_i: the
 * base-k digits of the token count after it. With them (see lmn/tree.py):
 * the counter merges at levels 0..top-1 (the k-1 kept siblings + the new node), stores
 * the new level-top node at position d_top - 1 of its level, and the read rule picks
 * per level i >= 1 the node at position max(d_i, 1) - 1 ("latest", levels 1..L) or the
 * nodes 0..d_i - 1 ("digits"), and for "digits" the tokens 0..d_0 - 2 of level 0.
 *
 * Layouts (row-major; C = n_banks * d, node vectors bank-major, KC = stride - 1):
 *   weights: emb (V, d) | per layer: n1 (d), sum_W (k*C, C), sum_b (C), qkv_W (d, 3d),
 *            qkv_b (3d), o_W (d, d), o_b (d), n2 (d), up_W (d, F), up_b (F), down_W (F, d),
 *            down_b (d) | lnf_w (d), lnf_b (d), head_W (d, V), head_b (V)
 *   (every matrix transposed against torch's Linear layout: input-major; sum_W's rows are
 *   child-major then bank-major: the summarizer's affine form)
 *   state, per stream and layer: nodes | slot_q | slot_v, each (levels + 1, KC, C): the
 *   kept nodes of every level (a token copied into every bank) and the W_q / W_v
 *   projections of each, bank b's slot at [b*d, (b+1)*d) (a token: one slot, [0, d))
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef REAL
#define REAL float
#endif

typedef REAL real;

enum { D_VOCAB, D_MODEL, D_LAYERS, D_HEADS, D_BANKS, D_FF, D_LEVELS, D_SINUSOIDAL, D_STRIDE, D_DIGITS, D_COUNT };

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

/* the most slots a position can read, itself included */
static int64_t max_slots(const int64_t *dims) {
    return 1 + (dims[D_LEVELS] + 1) * (dims[D_STRIDE] - 1) * dims[D_BANKS];
}

int64_t lmn_max_slots(const int64_t *dims) { return max_slots(dims); }

static int64_t work_size(const int64_t *dims) {
    int64_t d = dims[D_MODEL], C = dims[D_BANKS] * d, k = dims[D_STRIDE];
    /* h, x, attn out, y | cur, merged | children | qkv | ff hidden | scores */
    return 4 * d + 2 * C + k * C + 3 * d + dims[D_FF] + max_slots(dims);
}

/* project node v (C numbers, bank-major) with W_q and W_v into q and v (n_slots slots) */
static void project(const real *qW, const real *qb, const real *node, real *q, real *v, int64_t n_slots, int64_t d) {
    for (int64_t b = 0; b < n_slots; ++b) {
        matvec(qW, 3 * d, qb, node + b * d, q + b * d, d, d);
        matvec(qW + 2 * d, 3 * d, qb + 2 * d, node + b * d, v + b * d, d, d);
    }
}

int64_t lmn_work_size(const int64_t *dims) { return work_size(dims); }

/* Returns 0, or -(1 + r) if stream r's token id is outside [0, vocab). */
int64_t lmn_step(const real *weights, real *state, real *work, const int64_t *tokens, real *logits,
                 int64_t batch, int64_t pos, const int64_t *dims, const double *eps, const int64_t *plan,
                 int64_t *slot) {
    const int64_t V = dims[D_VOCAB], d = dims[D_MODEL], n_layers = dims[D_LAYERS];
    const int64_t H = dims[D_HEADS], nb = dims[D_BANKS], F = dims[D_FF], Lcap = dims[D_LEVELS];
    const int64_t k = dims[D_STRIDE], KC = k - 1, digits_rule = dims[D_DIGITS];
    const int64_t C = nb * d, dh = d / H;
    const int64_t layer_w = d + k * C * C + C + 3 * d * d + 3 * d + d * d + d + d + F * d + F + d * F + d;
    const int64_t store = (Lcap + 1) * KC * C, layer_s = 3 * store;
    const real scale = (real)(1.0 / sqrt((double)dh));
    const int64_t top = plan[0], L = plan[1];
    const int64_t *dig = plan + 2;

    for (int64_t r = 0; r < batch; ++r)
        if (tokens[r] < 0 || tokens[r] >= V) return -(1 + r);

    real *h = work, *x = h + d, *att = x + d, *y = att + d;
    real *cur = y + d, *merged = cur + C, *kids = merged + C, *qkv = kids + k * C;
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
            const real *n1 = w, *sW = n1 + d, *sb = sW + k * C * C, *qW = sb + C, *qb = qW + 3 * d * d;
            const real *oW = qb + 3 * d, *ob = oW + d * d, *n2 = ob + d, *uW = n2 + d, *ub = uW + F * d;
            const real *dW = ub + F, *db = dW + d * F;
            w += layer_w;
            real *nodes = state + (r * n_layers + l) * layer_s;
            real *sq = nodes + store, *sv = sq + store;
#define AT(buf, i, j) ((buf) + ((i) * KC + (j)) * C)
#define OFF(i, j) (((i) * KC + (j)) * C) /* of a node in the slot stores sq, sv */

            rms_norm(h, n1, (real)eps[2 * l], x, d);

            /* the base-k counter: a token is a level-0 node (x in every bank); at levels
               0..top-1 the k-1 kept siblings and the new node merge into a node of the
               level above; "latest" keeps each merged-away new node as its level's latest */
            for (int64_t b = 0; b < nb; ++b) memcpy(cur + b * d, x, (size_t)d * sizeof(real));
            for (int64_t i = 0; i < (top > Lcap ? Lcap : top); ++i) {
                memcpy(kids, AT(nodes, i, 0), (size_t)(KC * C) * sizeof(real));
                memcpy(kids + KC * C, cur, (size_t)C * sizeof(real));
                matvec(sW, C, sb, kids, merged, C, k * C);
                if (!digits_rule) {
                    memcpy(AT(nodes, i, 0), cur, (size_t)C * sizeof(real));
                    if (i > 0) project(qW, qb, cur, AT(sq, i, 0), AT(sv, i, 0), nb, d);
                }
                memcpy(cur, merged, (size_t)C * sizeof(real));
            }
            if (top > Lcap) {
                /* carried past the top level (a capped tree, max_level = Lcap): its block is
                   complete and the level above is not kept; "latest" keeps the new node */
                if (!digits_rule) {
                    memcpy(AT(nodes, Lcap, 0), cur, (size_t)C * sizeof(real));
                    project(qW, qb, cur, AT(sq, Lcap, 0), AT(sv, Lcap, 0), nb, d);
                }
            } else {
                const int64_t j = dig[top] - 1;
                memcpy(AT(nodes, top, j), cur, (size_t)C * sizeof(real));
                if (top > 0) project(qW, qb, cur, AT(sq, top, j), AT(sv, top, j), nb, d);
                else if (digits_rule) project(qW, qb, cur, AT(sq, 0, j), AT(sv, 0, j), 1, d);
            }

            /* the slots this position reads, besides itself: offsets into sq and sv */
            int64_t S = 0;
            if (digits_rule) {
                for (int64_t j = 0; j + 1 < dig[0]; ++j) slot[S++] = OFF(0, j);
                for (int64_t i = 1; i <= L; ++i)
                    for (int64_t j = 0; j < dig[i]; ++j)
                        for (int64_t b = 0; b < nb; ++b) slot[S++] = OFF(i, j) + b * d;
            } else {
                for (int64_t i = 1; i <= L; ++i)
                    for (int64_t b = 0; b < nb; ++b) slot[S++] = OFF(i, dig[i] > 0 ? dig[i] - 1 : 0) + b * d;
            }
#undef AT
#undef OFF

            /* single-vector attention over [x itself, the S slots] */
            matvec(qW, 3 * d, qb, x, qkv, 3 * d, d);
            const real *q = qkv, *kk = qkv + d, *v = qkv + 2 * d;
            for (int64_t hd = 0; hd < H; ++hd) {
                const int64_t o = hd * dh;
                real s0 = 0;
                for (int64_t j = 0; j < dh; ++j) s0 += q[o + j] * kk[o + j];
                sc[0] = s0 * scale;
                real mx = sc[0];
                for (int64_t s = 0; s < S; ++s) {
                    real acc = 0;
                    for (int64_t j = 0; j < dh; ++j) acc += sq[slot[s] + o + j] * kk[o + j];
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
                    for (int64_t s = 0; s < S; ++s) acc += sc[1 + s] * sv[slot[s] + o + j];
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
