// Streaming corpus readers: plain text, JSONL with a text field, and input/target pairs as TSV or
// JSONL. Files are read line by line, never whole.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace distill {

enum class CorpusFormat {
  kText,        // one document per line (or blank-line separated, see CorpusOptions)
  kJsonl,       // one JSON object per line, text under `text_field`
  kTsvPairs,    // input<TAB>target per line
  kJsonlPairs,  // one JSON object per line with `input_field` and `target_field`
};

// "text" | "jsonl" | "tsv" | "jsonl_pairs"; throws InputError otherwise.
CorpusFormat parse_corpus_format(const std::string& name);

struct CorpusOptions {
  std::vector<std::string> files;        // read in order
  CorpusFormat format = CorpusFormat::kText;
  bool blank_line_documents = false;     // kText: documents are separated by blank lines
  std::string text_field = "text";       // kJsonl: field holding the text
  std::string input_field = "input";     // kJsonlPairs: source field
  std::string target_field = "target";   // kJsonlPairs: target field
};

struct Document {
  std::string text;    // the document, or the input of a pair
  std::string target;  // the target of a pair; empty for monolingual corpora
};

struct CorpusStats {
  int64_t documents = 0;             // handed to the callback
  int64_t lines = 0;                 // lines read
  int64_t skipped_empty = 0;         // empty documents (or pairs with an empty side)
  int64_t skipped_invalid_utf8 = 0;  // lines that are not valid UTF-8
};

// Streams every document to `sink`. A missing file, a JSONL line that is not JSON or lacks the
// field, a TSV line without a tab: InputError with file:line. No document at all: InputError.
CorpusStats read_corpus(const CorpusOptions& options, const std::function<void(Document&&)>& sink);

bool is_valid_utf8(std::string_view s);

// Deterministic train/validation split by document index: true for about `fraction` of them.
bool is_validation_document(uint64_t index, uint64_t seed, double fraction);

}  // namespace distill
