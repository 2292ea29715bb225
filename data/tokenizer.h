// SentencePiece tokenizer with T5's conventions: <pad>=0, </s>=1, <unk>=2, no BOS, and N sentinel
// ids <extra_id_0> ... <extra_id_{N-1}> above the SentencePiece pieces, <extra_id_0> the highest.
// SentencePiece itself lives in libdistill_spm.so, loaded with dlopen (see data/spm/spm_c.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace distill {

class Tokenizer {
 public:
  // `model`: a directory with spiece.model (and tokenizer_config.json for the number of extra
  // ids; 100 when absent, as in Hugging Face) or a .model file. `extra_ids` >= 0 overrides.
  static Tokenizer load(const std::string& model, int64_t extra_ids = -1);

  // Ids of `text`, followed by </s> when add_eos, as Hugging Face's T5Tokenizer gives them:
  // "<pad>", "</s>", "<unk>" and "<extra_id_N>" (N < num_sentinels) written in the text are their
  // ids, and the whitespace around a sentinel is dropped.
  std::vector<int32_t> encode(std::string_view text, bool add_eos = true) const;
  // Text of `ids`, skipping pad, </s> and sentinels.
  std::string decode(const std::vector<int64_t>& ids) const;

  int64_t vocab_size() const { return pieces_ + extra_ids_; }  // pieces + sentinels
  int64_t pieces() const { return pieces_; }
  int64_t num_sentinels() const { return extra_ids_; }
  int64_t sentinel(int64_t i) const { return vocab_size() - 1 - i; }  // <extra_id_i>
  int64_t pad_id() const { return pad_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t unk_id() const { return unk_id_; }
  const std::string& model_file() const { return model_file_; }
  std::string piece(int64_t id) const;

 private:
  struct Special {
    int64_t id = -1;
    size_t length = 0;   // bytes of its text; 0 = no special token here
    bool strip = false;  // takes the whitespace around it (sentinels)
  };
  Special special_at(std::string_view text) const;
  void encode_pieces(std::string_view text, std::vector<int32_t>& out) const;  // SentencePiece only

  struct Handle;
  std::shared_ptr<Handle> handle_;
  std::string model_file_;
  int64_t pieces_ = 0, extra_ids_ = 0, pad_id_ = 0, eos_id_ = 1, unk_id_ = 2;
};

struct TokenizerTrainOptions {
  std::vector<std::string> inputs;  // plain-text files, one document per line
  int64_t vocab_size = 8000;        // total, sentinels included
  int64_t num_sentinels = 100;      // <extra_id_*> ids at the top of the vocabulary
  std::string model_type = "unigram";  // SentencePiece model type: unigram | bpe
  int64_t max_sentences = 300000;   // sentences sampled for training
  int threads = 2;                  // SentencePiece trainer threads
  std::string output_dir;           // receives spiece.model and tokenizer_config.json
};

// Trains a SentencePiece model on `inputs` with T5's special ids and writes it, with a
// tokenizer_config.json Hugging Face's T5Tokenizer reads, into output_dir (atomically per file).
void train_tokenizer(const TokenizerTrainOptions& options);

// Path of the SentencePiece wrapper library in use (after the first load), for diagnostics.
std::string spm_library_path();

}  // namespace distill
