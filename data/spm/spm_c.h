/* C interface to SentencePiece, built as its own shared library (libdistill_spm.so) and loaded
 * with dlopen(RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND): SentencePiece's bundled protobuf clashes
 * with LibTorch's when both are linked into one executable (a segfault before main).
 * Every function returns 0 on success; on failure a message is written into err (size errlen). */
#ifndef DISTILL_SPM_C_H_
#define DISTILL_SPM_C_H_

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct distill_spm distill_spm;

int distill_spm_load(const char* model_path, distill_spm** out, char* err, size_t errlen);
void distill_spm_free(distill_spm* spm);
int distill_spm_vocab_size(const distill_spm* spm);
/* Piece id, or the unknown id when absent. */
int distill_spm_piece_to_id(const distill_spm* spm, const char* piece);
/* Copies the piece (NUL-terminated, truncated to cap) and returns its full length, or -1 for a bad id. */
int distill_spm_id_to_piece(const distill_spm* spm, int id, char* out, size_t cap);
int distill_spm_is_control(const distill_spm* spm, int id);
/* Encodes text[0..len) into ids (capacity cap); *n receives the count, which may exceed cap, in
 * which case nothing is truncated silently: call again with a larger buffer. */
int distill_spm_encode(const distill_spm* spm, const char* text, size_t len, int* ids, size_t cap, size_t* n,
                       char* err, size_t errlen);
/* Decodes ids into out (capacity cap); *n receives the full length. */
int distill_spm_decode(const distill_spm* spm, const int* ids, size_t count, char* out, size_t cap, size_t* n,
                       char* err, size_t errlen);
/* SentencePieceTrainer::Train with a command-line style argument string. */
int distill_spm_train(const char* args, char* err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
