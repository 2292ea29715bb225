// Any bytes as a corpus in each format: a typed InputError or documents.
#include "data/corpus.h"
#include "models/errors.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = distill::fuzz::scratch_file(data, size, "corpus");
  for (const char* format : {"text", "jsonl", "tsv", "jsonl_pairs"}) {
    distill::CorpusOptions o;
    o.files = {path};
    o.format = distill::parse_corpus_format(format);
    o.blank_line_documents = size % 2 == 1;
    try {
      distill::read_corpus(o, [](distill::Document&&) {});
    } catch (const distill::Error&) {
    }
  }
  return 0;
}
