/*
 * The S'MoRE tree on the CPU in one native call (methods.md §4.3), for the few-token steps where libtorch's per-call
 * cost is the whole cost of the ~60 small calls the tensor form makes per module (SmoreTree.cs, SmoreKernel.cs).
 *
 * It runs between the two GEMMs that stay in libtorch: the input projection (x @ Input: the router's down-projection
 * and every sub-layer's A_e x + a_e, [G, M, d_down + Σ s_l·r_l]) and the final one (W_final x_L). In between, per row:
 * routing top-down (each parent path's router MLP, its logits against the sub-layer's keys, the top-f selection and
 * its weights; the children's routers see the token and their selected ancestors' keys), then the experts bottom-up
 * along the selected paths (u_e = B_e a + b_e with the scaling folded into B, the parent's W term, σ, the α-weighted
 * sum). The layouts are those of SmoreTensors: every tensor [G, ...] contiguous float32, matrices stored as the right
 * operand ([in, out], row-major). Selections are written out as the tensor form writes them ([G, M, P_l] ids and
 * weights, paths numbered row-major over the fan-outs from the top down).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { GATE_SWITCH = 0, GATE_NOISY_TOPK = 1, GATE_DENSE = 2 };
enum { ACT_IDENTITY = 0, ACT_TANH = 1, ACT_RELU = 2, ACT_PRELU = 3 };
enum { POSITION_ALL = 0, POSITION_CHILD = 1, POSITION_CHILD_V2 = 2 };

/* One sub-layer (l = 0 is the leaf) of G trees. Field order and types match SmoreKernel.Level in C#. */
typedef struct {
    int32_t experts, rank, fan_out, gate_dim;
    const float *b;             /* [G, s, r, d_{l+1}]: sc·B_eᵀ */
    const float *b_bias;        /* [G, s, 1, d_{l+1}]: sc·b_e */
    const float *w;             /* [G, d_l, d_{l+1}] (l ≥ 1), else NULL */
    const float *w_bias;        /* [G, 1, d_{l+1}] (l ≥ 1), else NULL */
    const float *slope;         /* [G]: PReLU slope of σ, or NULL */
    const float *gate_in;       /* [G, gate input, d_g] */
    const float *gate_in_bias;  /* [G, 1, d_g] */
    const float *gate_slope;    /* [G]: PReLU slope of the router, or NULL */
    const float *gate_out;      /* [G, d_g, d_g] */
    const float *gate_out_bias; /* [G, 1, d_g] */
    const float *keys;          /* [G, s, d_g], unit rows for the cosine gate */
    int64_t *ids;               /* out: [G, M, P_l] */
    float *weights;             /* out: [G, M, P_l] */
} smore_level;

/* The pass. Field order and types match SmoreKernel.Pass in C#. */
typedef struct {
    int32_t trees, rows, levels, down_dim, gate_type, gate_activation, expert_activation, position;
    const float *projected;     /* [G, M, d_down + Σ s_l·r_l] */
    float *out;                 /* out: [G, M, d_L], x_L of every row */
    const smore_level *level;   /* [L], leaf first */
} smore_pass;

static float activate(float v, int32_t activation, float slope)
{
    switch (activation) {
    case ACT_TANH: return tanhf(v);
    case ACT_RELU: return v > 0.0f ? v : 0.0f;
    case ACT_PRELU: return v >= 0.0f ? v : slope * v;
    default: return v;
    }
}

/* out[j] = bias[j] + Σ_i in[i]·m[i, j], m [n_in, n_out] row-major. */
static void affine(const float *in, int32_t n_in, const float *m, const float *bias, int32_t n_out, float *out)
{
    if (bias) memcpy(out, bias, sizeof(float) * (size_t)n_out);
    else memset(out, 0, sizeof(float) * (size_t)n_out);
    for (int32_t i = 0; i < n_in; i++) {
        const float a = in[i];
        const float *row = m + (size_t)i * (size_t)n_out;
        for (int32_t j = 0; j < n_out; j++) out[j] += a * row[j];
    }
}

/* The f largest of v[0..n) in descending order (ties: the lower index first), as ids and values. */
static void top(const float *v, int32_t n, int32_t f, int64_t *ids, float *values)
{
    for (int32_t c = 0; c < f; c++) {
        int32_t best = -1;
        for (int32_t e = 0; e < n; e++) {
            int taken = 0;
            for (int32_t k = 0; k < c; k++) taken |= ids[k] == e;
            if (taken) continue;
            if (best < 0 || v[e] > v[best] || (isnan(v[e]) && !isnan(v[best]))) best = e;
        }
        ids[c] = best;
        values[c] = v[best];
    }
}

static void softmax(float *v, int32_t n)
{
    float max = v[0];
    for (int32_t i = 1; i < n; i++) if (v[i] > max) max = v[i];
    float sum = 0.0f;
    for (int32_t i = 0; i < n; i++) { v[i] = expf(v[i] - max); sum += v[i]; }
    for (int32_t i = 0; i < n; i++) v[i] /= sum;
}

/* Π_{l' ≥ l} f_{l'}. */
static int64_t paths_at(const smore_pass *p, int32_t level)
{
    int64_t paths = 1;
    for (int32_t l = level; l < p->levels; l++) paths *= p->level[l].fan_out;
    return paths;
}

/* d_l = Σ_{l' < l} s_{l'}·r_{l'}. */
static int32_t hidden_dim(const smore_pass *p, int32_t level)
{
    int32_t d = 0;
    for (int32_t l = 0; l < level; l++) d += p->level[l].experts * p->level[l].rank;
    return d;
}

/* The router input width of sub-layer l: d_down plus the keys of its selected ancestors. */
static int32_t gate_input_dim(const smore_pass *p, int32_t level)
{
    int32_t d = p->down_dim;
    for (int32_t l = level + 1; l < p->levels; l++) d += p->level[l].gate_dim;
    return d;
}

/* Returns 0, or -1 when the scratch memory could not be allocated (nothing written then). */
int adapterserve_smore_tree(const smore_pass *p)
{
    const int32_t levels = p->levels;
    const int32_t width = p->down_dim + hidden_dim(p, levels);          /* columns of the projection */
    const int32_t d_last = hidden_dim(p, levels);
    const int64_t rows = (int64_t)p->trees * p->rows;

    /* Scratch, sized for the widest sub-layer: router inputs (sub-layer l reads P_{l+1} of gate_input_dim(l) each,
       which is also what sub-layer l + 1 writes for its children), the router's hidden and query vectors and logits,
       and the per-path values below and above a sub-layer. */
    size_t gate_inputs = 0, values = 0, logits = 0, gate = 0, vec = (size_t)d_last + 1;
    for (int32_t l = 0; l < levels; l++) {
        size_t parents = (size_t)paths_at(p, l + 1), children = (size_t)paths_at(p, l);
        size_t in = (size_t)gate_input_dim(p, l);
        if (parents * in > gate_inputs) gate_inputs = parents * in;
        size_t d_next = (size_t)hidden_dim(p, l + 1);
        if (children * d_next > values) values = children * d_next;
        if ((size_t)p->level[l].experts > logits) logits = (size_t)p->level[l].experts;
        if ((size_t)p->level[l].gate_dim > gate) gate = (size_t)p->level[l].gate_dim;
    }
    size_t total = 2 * gate_inputs + 2 * values + 2 * logits + 2 * gate + 3 * vec;
    float *scratch = (float *)malloc(sizeof(float) * total);
    int64_t *order = (int64_t *)malloc(sizeof(int64_t) * (logits + 1));
    if (!scratch || !order) { free(scratch); free(order); return -1; }
    float *in_parents = scratch, *in_children = in_parents + gate_inputs;
    float *below = in_children + gate_inputs, *above = below + values;
    float *score = above + values, *chosen = score + logits;
    float *hidden = chosen + logits, *query = hidden + gate;
    float *u = query + gate, *child = u + vec, *term = child + vec;

    for (int64_t row = 0; row < rows; row++) {
        const int64_t g = row / p->rows;
        const float *x = p->projected + row * width;                   /* [width]: x_down, then every A_e x + a_e */

        /* Routing, top-down (l = L−1 … 0). */
        memcpy(in_parents, x, sizeof(float) * (size_t)p->down_dim);
        int64_t parents = 1;
        for (int32_t l = levels - 1; l >= 0; l--) {
            const smore_level *lv = &p->level[l];
            const int32_t s = lv->experts, f = lv->fan_out, dg = lv->gate_dim, in = gate_input_dim(p, l);
            const int64_t paths = parents * f;
            const float *gate_in = lv->gate_in + g * (int64_t)in * dg, *gate_in_bias = lv->gate_in_bias + g * dg;
            const float *gate_out = lv->gate_out + g * (int64_t)dg * dg, *gate_out_bias = lv->gate_out_bias + g * dg;
            const float *keys = lv->keys + g * (int64_t)s * dg;
            const float gate_slope = lv->gate_slope ? lv->gate_slope[g] : 0.0f;
            int64_t *ids = lv->ids + row * paths;
            float *weights = lv->weights + row * paths;
            for (int64_t q = 0; q < parents; q++) {
                const float *gi = in_parents + q * in;
                affine(gi, in, gate_in, gate_in_bias, dg, hidden);
                for (int32_t j = 0; j < dg; j++) hidden[j] = activate(hidden[j], p->gate_activation, gate_slope);
                affine(hidden, dg, gate_out, gate_out_bias, dg, query);
                if (p->gate_type == GATE_NOISY_TOPK) {                  /* cosine: the query L2-normalised (keys already are) */
                    float norm = 0.0f;
                    for (int32_t j = 0; j < dg; j++) norm += query[j] * query[j];
                    norm = sqrtf(norm);
                    if (norm < 1e-12f) norm = 1e-12f;
                    for (int32_t j = 0; j < dg; j++) query[j] /= norm;
                }
                for (int32_t e = 0; e < s; e++) {
                    float dot = 0.0f;
                    for (int32_t j = 0; j < dg; j++) dot += query[j] * keys[(int64_t)e * dg + j];
                    score[e] = dot;
                }
                int64_t *id = ids + q * f;
                float *weight = weights + q * f;
                if (p->gate_type == GATE_DENSE) {                       /* every expert, softmax weights */
                    softmax(score, s);
                    for (int32_t e = 0; e < s; e++) { id[e] = e; weight[e] = score[e]; }
                } else if (p->gate_type == GATE_SWITCH) {               /* softmax over all, top-f, renormalised */
                    softmax(score, s);
                    top(score, s, f, order, chosen);
                    float sum = 0.0f;
                    for (int32_t c = 0; c < f; c++) sum += chosen[c];
                    for (int32_t c = 0; c < f; c++) { id[c] = order[c]; weight[c] = f > 1 ? chosen[c] / sum : chosen[c]; }
                } else {                                                /* top-f cosine logits, softmax (f = 1: the raw logit) */
                    top(score, s, f, order, chosen);
                    if (f > 1) softmax(chosen, f);
                    for (int32_t c = 0; c < f; c++) { id[c] = order[c]; weight[c] = chosen[c]; }
                }
                if (l > 0)                                              /* children's routers: [parent's input, selected key] */
                    for (int32_t c = 0; c < f; c++) {
                        float *ci = in_children + (q * f + c) * (in + dg);
                        memcpy(ci, gi, sizeof(float) * (size_t)in);
                        memcpy(ci + in, keys + id[c] * dg, sizeof(float) * (size_t)dg);
                    }
            }
            float *swap = in_parents; in_parents = in_children; in_children = swap;
            parents = paths;
        }

        /* The experts, bottom-up (l = 0 … L−1), along the selected paths. */
        for (int32_t l = 0; l < levels; l++) {
            const smore_level *lv = &p->level[l];
            const int32_t s = lv->experts, r = lv->rank, f = lv->fan_out;
            const int32_t d_in = hidden_dim(p, l), d_out = hidden_dim(p, l + 1);
            const int64_t paths = paths_at(p, l), parents_here = paths / f;
            const float *a = x + p->down_dim + d_in;                    /* this sub-layer's A_e x + a_e, expert e at e·r */
            const float *b = lv->b + g * (int64_t)s * r * d_out, *b_bias = lv->b_bias + g * (int64_t)s * d_out;
            const float *w = lv->w ? lv->w + g * (int64_t)d_in * d_out : NULL;
            const float *w_bias = lv->w_bias ? lv->w_bias + g * (int64_t)d_out : NULL;
            const float slope = lv->slope ? lv->slope[g] : 0.0f;
            const int64_t *ids = lv->ids + row * paths;
            const float *weights = lv->weights + row * paths;
            memset(above, 0, sizeof(float) * (size_t)(parents_here * d_out));
            for (int64_t path = 0; path < paths; path++) {
                const int64_t e = ids[path];
                const float alpha = weights[path];
                float *parent = above + (path / f) * d_out;
                affine(a + e * r, r, b + e * (int64_t)r * d_out, b_bias + e * d_out, d_out, u);   /* u_e, sc folded */
                if (l == 0) {
                    for (int32_t j = 0; j < d_out; j++)
                        parent[j] += alpha * (p->position == POSITION_ALL ? activate(u[j], p->expert_activation, slope) : u[j]);
                    continue;
                }
                const float *x_l = below + path * d_in;                 /* this path's child value x_l */
                for (int32_t i = 0; i < d_in; i++)
                    child[i] = p->position == POSITION_ALL ? x_l[i] : activate(x_l[i], p->expert_activation, slope);
                affine(child, d_in, w, w_bias, d_out, term);            /* W_l x_l + w_l */
                for (int32_t j = 0; j < d_out; j++) {
                    if (p->position == POSITION_CHILD) { parent[j] += alpha * u[j] + term[j]; continue; }
                    float v = u[j] + term[j];
                    if (p->position == POSITION_ALL) v = activate(v, p->expert_activation, slope);
                    parent[j] += alpha * v;
                }
            }
            float *swap = below; below = above; above = swap;
        }
        memcpy(p->out + row * d_last, below, sizeof(float) * (size_t)d_last);   /* P_L = 1: the root's x_L */
    }
    free(scratch);
    free(order);
    return 0;
}
