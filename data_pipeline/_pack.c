/* First-fit packing of whole documents into samples, the compiled core of
 * data_pipeline/packing.py (built at first use by data_pipeline/native.py).
 *
 * Documents come in packing order; a document longer than `capacity` is left out (route) or
 * cut into capacity-sized pieces (split). Each piece goes into the lowest-numbered of
 * `open_bins` slots with room for it; with none, into a free slot, else the slot opened first
 * is closed and reused. A slot is closed when full; at the end the open ones close in the
 * order they were opened. Samples are numbered in closing order, pieces within a sample in
 * packing order. This is exactly the algorithm of packing.pack_reference.
 */
#include <stdint.h>
#include <stdlib.h>

#define PIECES(n, cap) ((n) <= (cap) ? 1 : ((n) + (cap) - 1) / (cap))

/* Runs the body for piece p (tokens a..a+len of the i-th document in order). */
#define FOR_EACH_PIECE(...)                                                               \
    for (int64_t i = 0, p = 0; i < n_docs; ++i) {                                       \
        int64_t n = lengths[i];                                       \
        if (n > capacity && !split) continue;                                           \
        for (int64_t j = 0, k = PIECES(n, capacity); j < k; ++j, ++p) {                 \
            int64_t a = j * capacity, len = n - a < capacity ? n - a : capacity;        \
            __VA_ARGS__                                                                 \
        }                                                                               \
    }

static void close_slot(int64_t b, int64_t *rem, int64_t *inst, int64_t *rank_of_inst,
                       int64_t *n_closed) {
    rank_of_inst[inst[b]] = (*n_closed)++;
    rem[b] = -1;
}

/* Pass 1: the bin instance (then its closing rank) of every piece; returns samples or -1. */
static int64_t assign(const int64_t *lengths, int64_t n_docs,
                      int64_t capacity, int split, int64_t B, int64_t *bin_of,
                      int64_t *rank_of_inst) {
    int64_t *rem = malloc(B * sizeof(int64_t)), *first = malloc(B * sizeof(int64_t));
    int64_t *inst = malloc(B * sizeof(int64_t));
    if (!rem || !first || !inst) { free(rem); free(first); free(inst); return -1; }
    for (int64_t b = 0; b < B; ++b) rem[b] = -1, first[b] = -1;
    int64_t n_inst = 0, n_closed = 0, n_pieces = 0;
    FOR_EACH_PIECE({
        int64_t slot = -1, free_slot = -1, oldest = -1;
        for (int64_t b = 0; b < B; ++b) {
            if (rem[b] >= len) { slot = b; break; }
            if (rem[b] < 0 && free_slot < 0) free_slot = b;
        }
        if (slot < 0) {
            if (free_slot < 0) {  /* every slot busy: close the one opened first */
                for (int64_t b = 0; b < B; ++b)
                    if (oldest < 0 || first[b] < first[oldest]) oldest = b;
                close_slot(oldest, rem, inst, rank_of_inst, &n_closed);
                free_slot = oldest;
            }
            slot = free_slot;
            rem[slot] = capacity, first[slot] = p, inst[slot] = n_inst++;
        }
        bin_of[p] = inst[slot];
        rem[slot] -= len;
        if (rem[slot] == 0) close_slot(slot, rem, inst, rank_of_inst, &n_closed);
        n_pieces = p + 1;
    })
    for (;;) {  /* close what is still open, oldest first */
        int64_t oldest = -1;
        for (int64_t b = 0; b < B; ++b)
            if (rem[b] >= 0 && (oldest < 0 || first[b] < first[oldest])) oldest = b;
        if (oldest < 0) break;
        close_slot(oldest, rem, inst, rank_of_inst, &n_closed);
    }
    for (int64_t p = 0; p < n_pieces; ++p) bin_of[p] = rank_of_inst[bin_of[p]];
    free(rem); free(first); free(inst);
    return n_closed;
}

/* Packs documents of `lengths` (in packing order: lengths[i] is row order[i]'s); writes each piece's document
 * (its table row, order[i]), start and length in sample order, and sample_ptr[0..samples].
 * Returns the number of samples, or -1 out of memory. bin_of and rank_of_inst are scratch
 * arrays of one entry per piece. */
int64_t exaone_pack(const int64_t *lengths, const int64_t *order, int64_t n_docs,
                    int64_t capacity, int split,
                    int64_t open_bins, int64_t *bin_of, int64_t *rank_of_inst,
                    int64_t *out_doc, int64_t *out_start, int32_t *out_len,
                    int64_t *sample_ptr) {
    int64_t S = assign(lengths, n_docs, capacity, split, open_bins, bin_of,
                       rank_of_inst);
    if (S < 0) return -1;
    int64_t *cursor = rank_of_inst;  /* reused: pieces placed so far per sample */
    for (int64_t s = 0; s <= S; ++s) sample_ptr[s] = 0;
    FOR_EACH_PIECE({ (void)len; sample_ptr[bin_of[p] + 1] += 1; })
    for (int64_t s = 0; s < S; ++s) sample_ptr[s + 1] += sample_ptr[s], cursor[s] = 0;
    FOR_EACH_PIECE({
        int64_t at = sample_ptr[bin_of[p]] + cursor[bin_of[p]]++;
        out_doc[at] = order[i];
        out_start[at] = a, out_len[at] = (int32_t)len;
    })
    return S;
}
