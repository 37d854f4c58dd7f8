/* The compiled core of data_pipeline/packing.py (built at first use by data_pipeline/native.py):
 * first-fit packing of whole documents into samples, and numpy's shuffle with prefetching.
 *
 * Packing. Documents come in packing order; a document longer than `capacity` is left out
 * (route) or cut into capacity-sized pieces (split). Each piece goes into the lowest-numbered
 * of `open_bins` slots with room for it; with none, into the lowest free slot, else the slot
 * opened first is closed and reused. A slot is closed when full; at the end the open ones
 * close in the order they were opened. Samples are numbered in closing order, pieces within a
 * sample in packing order. This is exactly the algorithm of packing.pack_reference; only the
 * bookkeeping is faster: the room left in the slots sits in a max-tree (the lowest slot with
 * room for a piece is one descent, O(log open_bins), and "none" is one comparison at the
 * root), free slots in a bitmask, and bins are numbered as they open, so the one opened first
 * is the lowest-numbered bin still open (a pointer that only moves forward).
 */
#include <stdint.h>
#include <stdlib.h>

#define PIECES(n, cap) ((n) <= (cap) ? 1 : ((n) + (cap) - 1) / (cap))
#define AHEAD 64 /* documents (or shuffle steps) whose memory is prefetched in advance */
#define MAX_LEVELS 22 /* of the room tree: 8^21 leaves is more than any int64 count of slots */

typedef struct {
    int64_t levels;     /* of the room tree: 8^levels >= open_bins leaves */
    int32_t *room[MAX_LEVELS]; /* room[0][b]: room left in slot b (-1: free); room[l][x]: the
                                  largest of room[l-1][8x..8x+7]; room[levels-1] has 8 entries */
    uint64_t *free_mask; /* bit b: slot b is free */
    int64_t words;      /* of free_mask */
    int64_t *inst;      /* bin number open in slot b */
    int64_t *count;     /* pieces in slot b's bin */
    int64_t *state;     /* per bin: -(slot + 2) while open, then its closing rank */
    int64_t *sample_ptr; /* sample_ptr[rank + 1]: pieces of the sample closed rank-th */
    int64_t n_inst, n_closed, oldest;
} Bins;

/* Bit k set where v[k] >= len (branch-free, so the 8 comparisons run side by side). */
static inline unsigned fits8(const int32_t *v, int32_t len) {
    unsigned m = 0;
    for (int k = 0; k < 8; ++k) m |= (unsigned)(v[k] >= len) << k;
    return m;
}

static inline int32_t max8(const int32_t *v) {
    int32_t a = v[0] > v[1] ? v[0] : v[1], b = v[2] > v[3] ? v[2] : v[3];
    int32_t c = v[4] > v[5] ? v[4] : v[5], d = v[6] > v[7] ? v[6] : v[7];
    a = a > b ? a : b, c = c > d ? c : d;
    return a > c ? a : c;
}

static void set_room(Bins *s, int64_t b, int32_t room) {
    s->room[0][b] = room;
    for (int64_t l = 1; l < s->levels; ++l) {
        b >>= 3;
        s->room[l][b] = max8(s->room[l - 1] + 8 * b);
    }
}

static void close_bin(Bins *s, int64_t b) {
    s->state[s->inst[b]] = s->n_closed;
    s->sample_ptr[++s->n_closed] = s->count[b];
    s->free_mask[b >> 6] |= (uint64_t)1 << (b & 63);
}

/* The slot a piece of `len` tokens goes into (opening a bin there if needed). */
static int64_t slot_for(Bins *s, int32_t len, int32_t capacity) {
    unsigned m = fits8(s->room[s->levels - 1], len);
    if (m) {  /* the lowest slot with room: descend to the leftmost leaf */
        int64_t x = __builtin_ctz(m);
        for (int64_t l = s->levels - 2; l >= 0; --l)
            x = 8 * x + __builtin_ctz(fits8(s->room[l] + 8 * x, len));
        return x;
    }
    int64_t b = -1;
    for (int64_t w = 0; w < s->words && b < 0; ++w)
        if (s->free_mask[w]) b = w * 64 + __builtin_ctzll(s->free_mask[w]);
    if (b < 0) {  /* every slot busy: close the bin opened first */
        while (s->state[s->oldest] >= 0) s->oldest++;
        b = -s->state[s->oldest] - 2;
        close_bin(s, b);
    }
    s->free_mask[b >> 6] &= ~((uint64_t)1 << (b & 63));
    s->inst[b] = s->n_inst, s->state[s->n_inst++] = -(b + 2), s->count[b] = 0;
    s->room[0][b] = capacity;  /* set_room follows in place() */
    return b;
}

static void place(Bins *s, int32_t len, int32_t capacity, int64_t p, int64_t *bin_of) {
    int64_t b = slot_for(s, len, capacity);
    int32_t room = s->room[0][b] - len;
    bin_of[p] = s->inst[b];
    s->count[b]++;
    if (room == 0) close_bin(s, b), room = -1;
    set_room(s, b, room);
}

static int bins_init(Bins *s, int64_t B, int64_t n_pieces, int64_t *sample_ptr) {
    int64_t width = 8, ok = 1;
    for (s->levels = 1; width < B; ++s->levels) width *= 8;
    for (int64_t l = 0, w = width; l < s->levels; ++l, w /= 8) {
        s->room[l] = malloc(w * sizeof(int32_t)), ok = ok && s->room[l];
        for (int64_t i = 0; s->room[l] && i < w; ++i) s->room[l][i] = -1;
    }
    s->words = (B + 63) / 64;
    s->free_mask = calloc(s->words, sizeof(uint64_t));
    s->inst = malloc(B * sizeof(int64_t)), s->count = malloc(B * sizeof(int64_t));
    s->state = malloc((n_pieces > 0 ? n_pieces : 1) * sizeof(int64_t));
    s->sample_ptr = sample_ptr, s->n_inst = s->n_closed = s->oldest = 0;
    if (!ok || !s->free_mask || !s->inst || !s->count || !s->state) return -1;
    for (int64_t b = 0; b < B; ++b) s->free_mask[b >> 6] |= (uint64_t)1 << (b & 63);
    return 0;
}

static void bins_free(Bins *s) {
    for (int64_t l = 0; l < s->levels; ++l) free(s->room[l]);
    free(s->free_mask), free(s->inst), free(s->count), free(s->state);
}

/* Pass 1: each piece's bin, each bin's closing rank, each sample's size; the documents'
 * lengths in packing order go to n_ord first (read once, prefetched: a random gather). */
static void assign(Bins *s, const int32_t *lengths, const int64_t *order, int64_t n_docs,
                   int64_t capacity, int split, int64_t *bin_of, int32_t *n_ord) {
    for (int64_t i = 0; i < n_docs; ++i) {  /* a gather loop of its own: its misses overlap */
        if (i + AHEAD < n_docs) __builtin_prefetch(&lengths[order[i + AHEAD]]);
        n_ord[i] = lengths[order[i]];
    }
    for (int64_t i = 0, p = 0; i < n_docs; ++i) {
        int64_t n = n_ord[i];
        if (n > capacity && !split) continue;
        for (int64_t a = 0, k = PIECES(n, capacity); k > 0; --k, a += capacity, ++p)
            place(s, n - a < capacity ? n - a : capacity, capacity, p, bin_of);
    }
    for (int64_t k = s->oldest; k < s->n_inst; ++k)  /* close what is still open, oldest first */
        if (s->state[k] < 0) close_bin(s, -s->state[k] - 2);
}

/* The shard of global row `row`: offsets[s] <= row < offsets[s + 1] (branch-free search). */
static int64_t shard_of(const int64_t *offsets, int64_t n_shards, int64_t row) {
    int64_t lo = 0, len = n_shards;
    while (len > 1) {
        int64_t half = len / 2;
        lo = offsets[lo + half] <= row ? lo + half : lo;
        len -= half;
    }
    return lo;
}

/* Packs the documents lengths[order[i]] (i = 0..n_docs-1: rows of a table whose shard s holds
 * rows offsets[s]..offsets[s+1]-1); writes each piece's shard, document (row - offsets[shard]),
 * start and length in sample order, and sample_ptr[0..samples]. Returns the number of samples,
 * or -1 out of memory. `n_pieces` is the number of pieces (the output arrays' length). */
int64_t exaone_pack(const int32_t *lengths, const int64_t *order, int64_t n_docs,
                    const int64_t *offsets, int64_t n_shards, int64_t capacity, int split,
                    int64_t open_bins, int64_t n_pieces, int32_t *out_shard, int64_t *out_doc,
                    int64_t *out_start, int32_t *out_len, int64_t *sample_ptr) {
    Bins s;
    int64_t *bin_of = malloc((n_pieces > 0 ? n_pieces : 1) * sizeof(int64_t));
    int32_t *n_ord = malloc((n_docs > 0 ? n_docs : 1) * sizeof(int32_t));
    int ok = bins_init(&s, open_bins, n_pieces, sample_ptr) == 0 && bin_of && n_ord;
    if (ok) {
        sample_ptr[0] = 0;
        assign(&s, lengths, order, n_docs, capacity, split, bin_of, n_ord);
        for (int64_t r = 0; r < s.n_closed; ++r) sample_ptr[r + 1] += sample_ptr[r];
        for (int64_t k = 0; k < s.n_inst; ++k) s.state[k] = sample_ptr[s.state[k]];  /* cursor */
        for (int64_t i = 0, p = 0; i < n_docs; ++i) {  /* pass 2: write the pieces in place */
            int64_t n = n_ord[i], row = order[i];
            if (n > capacity && !split) continue;
            int64_t sh = shard_of(offsets, n_shards, row), doc = row - offsets[sh];
            for (int64_t a = 0, k = PIECES(n, capacity); k > 0; --k, a += capacity, ++p) {
                int64_t at = s.state[bin_of[p]]++;
                out_shard[at] = (int32_t)sh, out_doc[at] = doc, out_start[at] = a;
                out_len[at] = (int32_t)(n - a < capacity ? n - a : capacity);
            }
        }
    }
    bins_free(&s), free(bin_of), free(n_ord);
    return ok ? s.n_closed : -1;
}

/* numpy's Generator.permutation(n): arange(n), then its shuffle (random_interval, then a
 * swap, for i = n-1 down to 1), drawing from the caller's bit generator through its ctypes interface, so the
 * result and the generator's state afterwards are numpy's own; the AHEAD next draws are made
 * in advance to prefetch the elements they will swap (the swaps are cache misses). */
typedef uint32_t (*next32_fn)(void *);
typedef uint64_t (*next64_fn)(void *);

static uint64_t random_interval(void *st, next32_fn n32, next64_fn n64, uint64_t max) {
    uint64_t mask = max, value;
    if (max == 0) return 0;
    mask |= mask >> 1, mask |= mask >> 2, mask |= mask >> 4;
    mask |= mask >> 8, mask |= mask >> 16, mask |= mask >> 32;
    if (max <= 0xffffffffULL)
        while ((value = (n32(st) & mask)) > max) {}
    else
        while ((value = (n64(st) & mask)) > max) {}
    return value;
}

void exaone_shuffle(int64_t *data, int64_t n, void *st, next32_fn n32, next64_fn n64) {
    int64_t ring[AHEAD];
    for (int64_t i = 0; i < n; ++i) data[i] = i;  /* numpy's permutation(n) shuffles arange(n) */
    for (int64_t t = 0; t < AHEAD && n - 1 - t >= 1; ++t) {
        ring[t] = (int64_t)random_interval(st, n32, n64, (uint64_t)(n - 1 - t));
        __builtin_prefetch(&data[ring[t]], 1);
    }
    for (int64_t i = n - 1, t = 0; i >= 1; --i, t = (t + 1) % AHEAD) {
        int64_t j = ring[t], tmp;
        if (i - AHEAD >= 1) {
            ring[t] = (int64_t)random_interval(st, n32, n64, (uint64_t)(i - AHEAD));
            __builtin_prefetch(&data[ring[t]], 1);
        }
        tmp = data[j], data[j] = data[i], data[i] = tmp;
    }
}
