// The only translation unit that sees SentencePiece; see spm_c.h for why it is a separate library.
#include "data/spm/spm_c.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstring>
#include <exception>
#include <string>
#include <vector>

struct distill_spm {
  sentencepiece::SentencePieceProcessor processor;
};

namespace {
int fail(const std::string& msg, char* err, size_t errlen) {
  if (err && errlen > 0) {
    std::strncpy(err, msg.c_str(), errlen - 1);
    err[errlen - 1] = '\0';
  }
  return 1;
}
}  // namespace

extern "C" {

int distill_spm_load(const char* model_path, distill_spm** out, char* err, size_t errlen) {
  try {
    auto* spm = new distill_spm;
    auto status = spm->processor.Load(model_path);
    if (!status.ok()) {
      delete spm;
      return fail(status.ToString(), err, errlen);
    }
    *out = spm;
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what(), err, errlen);
  }
}

void distill_spm_free(distill_spm* spm) { delete spm; }

int distill_spm_vocab_size(const distill_spm* spm) { return spm->processor.GetPieceSize(); }

int distill_spm_piece_to_id(const distill_spm* spm, const char* piece) { return spm->processor.PieceToId(piece); }

int distill_spm_id_to_piece(const distill_spm* spm, int id, char* out, size_t cap) {
  if (id < 0 || id >= spm->processor.GetPieceSize()) return -1;
  const std::string& p = spm->processor.IdToPiece(id);
  if (cap > 0) {
    size_t n = p.size() < cap - 1 ? p.size() : cap - 1;
    std::memcpy(out, p.data(), n);
    out[n] = '\0';
  }
  return static_cast<int>(p.size());
}

int distill_spm_is_control(const distill_spm* spm, int id) { return spm->processor.IsControl(id) ? 1 : 0; }

int distill_spm_encode(const distill_spm* spm, const char* text, size_t len, int* ids, size_t cap, size_t* n,
                       char* err, size_t errlen) {
  try {
    std::vector<int> v;
    auto status = spm->processor.Encode(absl::string_view(text, len), &v);
    if (!status.ok()) return fail(status.ToString(), err, errlen);
    *n = v.size();
    if (v.size() <= cap && !v.empty()) std::memcpy(ids, v.data(), v.size() * sizeof(int));
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what(), err, errlen);
  }
}

int distill_spm_decode(const distill_spm* spm, const int* ids, size_t count, char* out, size_t cap, size_t* n,
                       char* err, size_t errlen) {
  try {
    std::string text;
    auto status = spm->processor.Decode(std::vector<int>(ids, ids + count), &text);
    if (!status.ok()) return fail(status.ToString(), err, errlen);
    *n = text.size();
    if (text.size() <= cap && !text.empty()) std::memcpy(out, text.data(), text.size());
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what(), err, errlen);
  }
}

int distill_spm_train(const char* args, char* err, size_t errlen) {
  try {
    auto status = sentencepiece::SentencePieceTrainer::Train(args);
    if (!status.ok()) return fail(status.ToString(), err, errlen);
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what(), err, errlen);
  }
}

}  // extern "C"
