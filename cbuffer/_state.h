/* The packed state word shared by cbuffer's buffers: layout constants only.
 * The protocol that changes the word is in _state.pxd. */
#ifndef CBUFFER_STATE_H
#define CBUFFER_STATE_H

#include <stdint.h>

#define CB_SEALED        ((uint64_t)1 << 0)
#define CB_FLUSHING      ((uint64_t)1 << 1)
/* From the reserved bits 7..2: a ring that is closing never reopens a slot
 * marked shut (see _ring.pyx, "closing"). */
#define CB_SHUT          ((uint64_t)1 << 2)
/* Reserved bits 7..3: the writes reserved in this generation, modulo 32,
 * counted by the reserving compare-and-swap itself.  The write that wraps the
 * count carries CB_COUNT_WRAP to a counter beside the word, so counting costs
 * one locked add per 32 writes instead of one per write. */
#define CB_COUNT_SHIFT   3
#define CB_COUNT_ONE     ((uint64_t)1 << CB_COUNT_SHIFT)
#define CB_COUNT_MASK    ((uint64_t)0x1F << CB_COUNT_SHIFT)
#define CB_COUNT_WRAP    32
#define CB_WRITER_SHIFT  8
#define CB_WRITER_ONE    ((uint64_t)1 << CB_WRITER_SHIFT)
#define CB_WRITER_MAX    ((uint64_t)0xFFFFFF)
#define CB_WRITER_MASK   (CB_WRITER_MAX << CB_WRITER_SHIFT)
#define CB_OFFSET_SHIFT  32
#define CB_OFFSET_MAX    ((uint64_t)0xFFFFFFFF)

#endif /* CBUFFER_STATE_H */
