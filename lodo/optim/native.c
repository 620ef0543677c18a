/* LODO's preconditioners in plain C: the Kronecker stack P(θ)·v = Eᵀ G̃ᵀ G̃ E v and LODO-Residuals, forward and
 * hand-written backward, for B vectors at once. Built by lodo/optim/native.py once per dtype (-DREAL=double or
 * -DREAL=float) and called through ctypes on the data of contiguous CPU tensors. The layouts are those of
 * preconditioners.py: a Kronecker layer's blocks are w[i][o][c] (entry (i, o) of block c, C = h/k blocks), the
 * vectors between layers are (k, C) with entry i of block c at i·C + c, and the permutations are folded into int32
 * gathers; LODO-Residuals' weights are one depth × h array. */

/* Why C: at the paper's n = 100 the stack is ~10⁵ flops, so the torch path's time is the overhead of hundreds
 * of small eager operations (README, "Performance"). Here each layer is one pass: gather its input, keep it for
 * the backward, and multiply by the blocks, CHUNK block columns at a time so that everything stays in L1. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef REAL real;
#define CHUNK 256

/* Each k×k block product runs with all k outputs of one block column in registers, vectorized across columns; the
 * helpers are inlined with k = 4 (the paper's block size) and with the transposed flag as constants, which is what
 * lets the compiler unroll the block and vectorize. Any other k takes the same code with k unknown (slower). */
#define INLINE static inline __attribute__((always_inline))
#define W(p, q) w[((transposed) ? (q) * k + (p) : (p) * k + (q)) * C + c]  /* entry (p, q) of the used block */

/* dst[q] = Σ_p a[p]·w[p][q] (w[q][p] when transposed) for len block columns; a has row stride `stride`. */
INLINE void block_product(long k, int transposed, long C, long len, const real *restrict a, long stride,
                          const real *restrict w, real *restrict dst) {
    for (long c = 0; c < len; c++)
        for (long q = 0; q < k; q++) {
            real sum = a[c] * W(0, q);
            for (long p = 1; p < k; p++) sum += a[p * stride + c] * W(p, q);
            dst[q * C + c] = sum;
        }
}

/* The weight gradient of block_product for len columns: grad(p, q) (+)= a[p]·g[q] (assigned when first); g has row
 * stride CHUNK. (The input's gradient is block_product with the blocks transposed.) */
INLINE void outer_product(long k, int transposed, int first, long C, long len, const real *restrict a,
                          const real *restrict g, real *restrict grad) {
    for (long p = 0; p < k; p++)
        for (long q = 0; q < k; q++) {
            real *dw = grad + ((transposed) ? q * k + p : p * k + q) * C;
            const real *ap = a + p * C, *gq = g + q * CHUNK;
            if (first)
                for (long c = 0; c < len; c++) dw[c] = ap[c] * gq[c];
            else
                for (long c = 0; c < len; c++) dw[c] += ap[c] * gq[c];
        }
}

/* One Kronecker layer on one vector: a = src gathered by index (NULL: src itself), kept in act (stride C), or in a
 * scratch when act is NULL; then the block product into dst. CHUNK columns at a time, so a stays in L1. */
static void kron_layer(long k, long C, const real *src, const int32_t *index, const real *w, int transposed,
                       real *act, real *dst, real *scratch) {
    for (long c0 = 0; c0 < C; c0 += CHUNK) {
        long len = C - c0 < CHUNK ? C - c0 : CHUNK, stride = act ? C : CHUNK;
        real *a = act ? act + c0 : scratch;
        for (long p = 0; p < k; p++)
            for (long c = 0; c < len; c++)
                a[p * stride + c] = index ? src[index[p * C + c0 + c]] : src[p * C + c0 + c];
        if (k == 4 && transposed)
            block_product(4, 1, C, len, a, stride, w + c0, dst + c0);
        else if (k == 4)
            block_product(4, 0, C, len, a, stride, w + c0, dst + c0);
        else
            block_product(k, transposed, C, len, a, stride, w + c0, dst + c0);
    }
}

/* The backward of kron_layer: g = src gathered by index is the gradient of its output; add the weight gradient
 * (assign it when first), and write the gradient of its (gathered) input to dst. */
static void kron_layer_backward(long k, long C, const real *src, const int32_t *index, const real *w,
                                int transposed, const real *act, real *grad, int first, real *dst, real *g) {
    for (long c0 = 0; c0 < C; c0 += CHUNK) {
        long len = C - c0 < CHUNK ? C - c0 : CHUNK;
        for (long q = 0; q < k; q++)
            for (long c = 0; c < len; c++) g[q * CHUNK + c] = index ? src[index[q * C + c0 + c]] : src[q * C + c0 + c];
        outer_product(k, transposed, first, C, len, act + c0, g, grad + c0);
        if (k == 4)
            block_product(4, !transposed, C, len, g, CHUNK, w + c0, dst + c0);
        else
            block_product(k, !transposed, C, len, g, CHUNK, w + c0, dst + c0);
    }
}

/* out (B×n) = P(θ)·v for v (B×n). Layer l's blocks at blocks[l]; forward and reverse gathers (depth×h, as in
 * preconditioners.py); act: the 2·depth layer inputs (2·depth × B × h), or NULL when no backward follows. */
void kronecker_forward(long B, long n, long k, long C, long depth, const real *v, real *const *blocks,
                       const int32_t *forward, const int32_t *reverse, real *act, real *out) {
    long h = k * C;
    real *z = malloc(sizeof(real) * (2 * h + k * CHUNK)), *other = z + h, *scratch = z + 2 * h;
    for (long b = 0; b < B; b++) {
        real *src = z, *dst = other;
        memcpy(src, v + b * n, sizeof(real) * n);
        memset(src + n, 0, sizeof(real) * (h - n));  /* E: zero-padding to the hidden width */
        for (long s = 0; s < 2 * depth; s++) {        /* the depth layers of G̃, then those of G̃ᵀ in reverse */
            long l = s < depth ? s : 2 * depth - 1 - s;
            const int32_t *index = s < depth ? forward + l * h : s == depth ? NULL : reverse + (l + 1) * h;
            kron_layer(k, C, src, index, blocks[l], s >= depth, act ? act + (s * B + b) * h : NULL, dst, scratch);
            real *t = src; src = dst; dst = t;
        }
        for (long j = 0; j < n; j++) out[b * n + j] = depth ? src[reverse[j]] : src[j];
    }
    free(z);
}

/* The hand-written backward of kronecker_forward: weight gradients into grads[l] (overwritten), and the input's
 * gradient (B×n) when input_grad is not NULL. The inverse gathers undo the forward ones. */
void kronecker_backward(long B, long n, long k, long C, long depth, const real *grad, real *const *blocks,
                        const int32_t *forward_inverse, const int32_t *reverse_inverse, const real *act,
                        real *const *grads, real *input_grad) {
    long h = k * C;
    real *z = malloc(sizeof(real) * (2 * h + k * CHUNK)), *other = z + h, *scratch = z + 2 * h;
    for (long b = 0; b < B; b++) {
        real *src = z, *dst = other;
        memcpy(src, grad + b * n, sizeof(real) * n);
        memset(src + n, 0, sizeof(real) * (h - n));
        for (long s = 0; s < 2 * depth; s++) {  /* the layers of the forward pass, from its output back */
            long forward_step = 2 * depth - 1 - s, l = s < depth ? s : forward_step;
            const int32_t *index = s < depth ? reverse_inverse + l * h
                                   : l == depth - 1 ? NULL : forward_inverse + (l + 1) * h;
            /* the transposed use of θ⁽ˡ⁾ comes first: it assigns, its forward use then adds */
            kron_layer_backward(k, C, src, index, blocks[l], s < depth, act + (forward_step * B + b) * h, grads[l],
                                b == 0 && s < depth, dst, scratch);
            real *t = src; src = dst; dst = t;
        }
        if (input_grad)
            for (long j = 0; j < n; j++) input_grad[b * n + j] = depth ? src[forward_inverse[j]] : src[j];
    }
    free(z);
}

/* LODO-Residuals: z ← z + w_l ⊙ z[π_l] for each layer, z ← d ⊙ z, then z ← z + (w_l ⊙ z)[π_l⁻¹] in reverse;
 * w_l is row l of weights (depth × h). act: the 2·depth + 1 values the backward needs (each B × h), or NULL. */
void residual_forward(long B, long n, long h, long depth, const real *v, const int64_t *perms,
                      const int64_t *inverses, const real *weights, const real *diagonal, real *act, real *out) {
    real *z = malloc(sizeof(real) * 2 * h), *tmp = z + h;
    for (long b = 0; b < B; b++) {
        memcpy(z, v + b * n, sizeof(real) * n);
        memset(z + n, 0, sizeof(real) * (h - n));
        for (long l = 0; l < depth; l++) {
            real *permuted = act ? act + (l * B + b) * h : tmp;
            const int64_t *perm = perms + l * h;
            const real *w = weights + l * h;
            for (long j = 0; j < h; j++) permuted[j] = z[perm[j]];
            for (long j = 0; j < h; j++) z[j] = z[j] + w[j] * permuted[j];
        }
        if (act) memcpy(act + (depth * B + b) * h, z, sizeof(real) * h);
        for (long j = 0; j < h; j++) z[j] = diagonal[j] * z[j];
        for (long l = depth - 1; l >= 0; l--) {
            const int64_t *inverse = inverses + l * h;
            const real *w = weights + l * h;
            if (act) memcpy(act + ((2 * depth - l) * B + b) * h, z, sizeof(real) * h);
            for (long j = 0; j < h; j++) tmp[j] = w[j] * z[j];
            for (long j = 0; j < h; j++) z[j] = z[j] + tmp[inverse[j]];
        }
        memcpy(out + b * n, z, sizeof(real) * n);
    }
    free(z);
}

/* The hand-written backward of residual_forward: gradients of the weights (grads, depth × h, overwritten), of the
 * diagonal, and of the input (when input_grad is not NULL). */
void residual_backward(long B, long n, long h, long depth, const real *grad, const int64_t *perms,
                       const int64_t *inverses, const real *weights, const real *diagonal, const real *act,
                       real *grads, real *diagonal_grad, real *input_grad) {
    real *g = malloc(sizeof(real) * 2 * h), *tmp = g + h;
    for (long b = 0; b < B; b++) {
        memcpy(g, grad + b * n, sizeof(real) * n);
        memset(g + n, 0, sizeof(real) * (h - n));
        for (long l = 0; l < depth; l++) {  /* z ← z + (w ⊙ z)[π⁻¹], undone from the output side */
            const int64_t *perm = perms + l * h;
            const real *w = weights + l * h, *z = act + ((2 * depth - l) * B + b) * h;
            real *dw = grads + l * h;
            for (long j = 0; j < h; j++) tmp[j] = g[perm[j]];
            for (long j = 0; j < h; j++) dw[j] = b == 0 ? tmp[j] * z[j] : dw[j] + tmp[j] * z[j];
            for (long j = 0; j < h; j++) g[j] = g[j] + tmp[j] * w[j];
        }
        const real *before_diagonal = act + (depth * B + b) * h;
        for (long j = 0; j < h; j++) {
            diagonal_grad[j] = b == 0 ? g[j] * before_diagonal[j] : diagonal_grad[j] + g[j] * before_diagonal[j];
            g[j] = g[j] * diagonal[j];
        }
        for (long l = depth - 1; l >= 0; l--) {  /* z ← z + w ⊙ z[π] */
            const int64_t *inverse = inverses + l * h;
            const real *w = weights + l * h, *permuted = act + (l * B + b) * h;
            real *dw = grads + l * h;
            for (long j = 0; j < h; j++) dw[j] += g[j] * permuted[j];
            for (long j = 0; j < h; j++) tmp[j] = g[j] * w[j];
            for (long j = 0; j < h; j++) g[j] = g[j] + tmp[inverse[j]];
        }
        if (input_grad) memcpy(input_grad + b * n, g, sizeof(real) * n);
    }
    free(g);
}
