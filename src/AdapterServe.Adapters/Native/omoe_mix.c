/*
 * OMoE's per-token mixture on the CPU in one native call (methods.md §4.2; OmoeKernel.cs), for the few-token steps
 * where the ~20 small libtorch calls of the tensor form (softmax, top-K, norms, the guard's order, the batched QR, the
 * sign fix, the gated sum) cost more than their arithmetic.
 *
 * It runs between the GEMMs that stay in libtorch: the router's logits and the experts' outputs in their coordinates
 * before it (S_i = R_B[:, block i]·(A_i x), p numbers per expert: OmoeModule), the basis U after it (y = U·v). Per row
 * (a token of one group: one module, or one sibling of several side by side): g = softmax(logits); with top_k the K
 * most probable experts, kept in expert order, gates renormalised over them; then modified Gram–Schmidt of their S_i
 * in expert order, a residual shorter than ε giving a zero direction (the expert contributes nothing and bends no
 * later direction); v = Σ_i g_i · (‖S_i‖ or 1) · q_i. ‖S_i‖ = ‖E_i‖ and every inner product is U's, so this is the
 * mixture of the experts' outputs in U's coordinates. A row's scale (the slot path's adapter scale) multiplies it.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Field order and types match OmoeKernel.Pass in C#. Rows are (token, group) pairs, numbered t·G + g, or g·T + t
   when group_major (the slot path's [slots, tokens] layout). */
typedef struct {
    int32_t tokens, groups, experts, top_k, width, rescale_norm, group_major; /* top_k 0: every expert; width: p */
    float eps;
    const float *logits;        /* [rows, n] contiguous */
    const float *coordinates;   /* [groups, n, tokens, p] contiguous (the batched GEMM's output) */
    const float *scale;         /* [rows]: a factor on each row's mixture (0 on padding rows), or NULL */
    float *out;                 /* out: [rows, p] */
    int64_t *selected;          /* out: [rows, K] ascending expert ids, or NULL without top_k */
} omoe_pass;

/* Returns 0; -1 when the scratch memory could not be allocated, -2 for sizes out of range (nothing written then). */
int adapterserve_omoe_mix(const omoe_pass *p)
{
    if (p->experts < 1 || p->width < 1 || p->top_k < 0 || p->top_k > p->experts || p->tokens < 0 || p->groups < 0) return -2;
    const int32_t n = p->experts, width = p->width;
    const int32_t k = p->top_k > 0 ? p->top_k : n;
    double *gates = (double *)malloc(sizeof(double) * (size_t)n);
    double *basis = (double *)malloc(sizeof(double) * (size_t)k * (size_t)width);   /* q_1 … q_k */
    double *residual = (double *)malloc(sizeof(double) * (size_t)width);
    double *mixed = (double *)malloc(sizeof(double) * (size_t)width);
    int32_t *chosen = (int32_t *)malloc(sizeof(int32_t) * (size_t)n);      /* the participating experts, in expert order */
    char *taken = (char *)malloc((size_t)n);
    if (!gates || !basis || !residual || !mixed || !chosen || !taken) {
        free(gates); free(basis); free(residual); free(mixed); free(chosen); free(taken);
        return -1;
    }

    for (int32_t t = 0; t < p->tokens; t++)
        for (int32_t g = 0; g < p->groups; g++) {
            const int64_t row = p->group_major ? (int64_t)g * p->tokens + t : (int64_t)t * p->groups + g;
            const double row_scale = p->scale ? p->scale[row] : 1.0;
            const float *logits = p->logits + row * n;

            /* g = softmax(logits) */
            double max = logits[0], sum = 0.0;
            for (int32_t i = 1; i < n; i++) if (logits[i] > max) max = logits[i];
            for (int32_t i = 0; i < n; i++) { gates[i] = exp((double)logits[i] - max); sum += gates[i]; }
            for (int32_t i = 0; i < n; i++) gates[i] /= sum;

            /* The participating experts in expert order: all, or the K most probable (ties: the lower index). */
            double mass = 1.0;
            if (p->top_k > 0) {
                memset(taken, 0, (size_t)(uint32_t)n);
                for (int32_t c = 0; c < k; c++) {
                    int32_t best = -1;
                    for (int32_t i = 0; i < n; i++)
                        if (!taken[i] && (best < 0 || gates[i] > gates[best])) best = i;
                    taken[best] = 1;
                }
                mass = 0.0;
                for (int32_t i = 0, c = 0; i < n; i++)
                    if (taken[i]) {
                        mass += gates[i];
                        chosen[c] = i;
                        p->selected[row * k + c++] = i;
                    }
            } else {
                for (int32_t i = 0; i < n; i++) chosen[i] = i;
            }

            /* Modified Gram–Schmidt in expert order, ε guard, and the gated sum v = Σ c_i q_i. */
            for (int32_t j = 0; j < width; j++) mixed[j] = 0.0;
            for (int32_t c = 0; c < k; c++) {
                const int32_t i = chosen[c];
                const float *s = p->coordinates + (((int64_t)g * n + i) * p->tokens + t) * width;   /* S_i of this row */
                double norm = 0.0;
                for (int32_t j = 0; j < width; j++) { residual[j] = s[j]; norm += (double)s[j] * s[j]; }
                norm = sqrt(norm);
                double *q = basis + (size_t)c * width;
                for (int32_t m = 0; m < c; m++) {
                    const double *previous = basis + (size_t)m * width;
                    double dot = 0.0;
                    for (int32_t j = 0; j < width; j++) dot += previous[j] * residual[j];
                    for (int32_t j = 0; j < width; j++) residual[j] -= dot * previous[j];
                }
                double length = 0.0;
                for (int32_t j = 0; j < width; j++) length += residual[j] * residual[j];
                length = sqrt(length);
                if (!(length >= p->eps)) {                              /* guarded: no direction */
                    for (int32_t j = 0; j < width; j++) q[j] = 0.0;
                    continue;
                }
                const double coefficient = row_scale * gates[i] / mass * (p->rescale_norm ? norm : 1.0);
                for (int32_t j = 0; j < width; j++) {
                    q[j] = residual[j] / length;
                    mixed[j] += coefficient * q[j];
                }
            }
            float *v = p->out + row * width;
            for (int32_t j = 0; j < width; j++) v[j] = (float)mixed[j];
        }
    free(gates);
    free(basis);
    free(residual);
    free(mixed);
    free(chosen);
    free(taken);
    return 0;
}
