#include "data/corpus.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "models/io/atomic_file.h"
#include "models/errors.h"

namespace distill {

CorpusFormat parse_corpus_format(const std::string& name) {
  if (name == "text") return CorpusFormat::kText;
  if (name == "jsonl") return CorpusFormat::kJsonl;
  if (name == "tsv") return CorpusFormat::kTsvPairs;
  if (name == "jsonl_pairs") return CorpusFormat::kJsonlPairs;
  throw InputError("unknown corpus format \"" + name + "\" (expected text, jsonl, tsv or jsonl_pairs)");
}

bool is_valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n;
    uint32_t cp;
    if (c < 0x80) { ++i; continue; }
    if ((c >> 5) == 0x6) { n = 1; cp = c & 0x1F; }
    else if ((c >> 4) == 0xE) { n = 2; cp = c & 0x0F; }
    else if ((c >> 3) == 0x1E) { n = 3; cp = c & 0x07; }
    else return false;
    if (i + n >= s.size()) return false;  // truncated sequence
    for (size_t k = 1; k <= n; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc >> 6) != 0x2) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are invalid.
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += n + 1;
  }
  return true;
}

bool is_validation_document(uint64_t index, uint64_t seed, double fraction) {
  // splitmix64 of (seed, index): stable across platforms and runs.
  uint64_t z = index + 0x9E3779B97F4A7C15ull * (seed + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) / static_cast<double>(1ull << 53) < fraction;
}

namespace {

std::string where(const std::string& file, int64_t line) { return file + ":" + std::to_string(line); }

std::string json_string_field(const nlohmann::json& j, const std::string& field, const std::string& at) {
  if (!j.is_object()) throw InputError(at + ": expected a JSON object");
  auto it = j.find(field);
  if (it == j.end()) throw InputError(at + ": no field \"" + field + "\"");
  if (!it->is_string()) throw InputError(at + ": field \"" + field + "\" must be a string, got " + it->type_name());
  return it->get<std::string>();
}

}  // namespace

CorpusStats read_corpus(const CorpusOptions& o, const std::function<void(Document&&)>& sink) {
  CorpusStats stats;
  if (o.files.empty()) throw InputError("corpus: no files given");
  auto emit = [&](Document&& d) {
    const bool pair = o.format == CorpusFormat::kTsvPairs || o.format == CorpusFormat::kJsonlPairs;
    auto blank = [](const std::string& t) { return t.find_first_not_of(" \t\r\n") == std::string::npos; };
    if (blank(d.text) || (pair && blank(d.target))) {
      ++stats.skipped_empty;
      return;
    }
    ++stats.documents;
    sink(std::move(d));
  };
  for (const auto& file : o.files) {
    if (const auto kind = non_regular_kind(file); !kind.empty()) throw InputError(file + ": is " + kind + ", not a corpus file");
    std::ifstream in(file);
    if (!in) throw InputError(file + ": cannot open corpus file");
    std::string line, pending;
    int64_t line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      ++stats.lines;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!is_valid_utf8(line)) {
        ++stats.skipped_invalid_utf8;
        continue;
      }
      switch (o.format) {
        case CorpusFormat::kText:
          if (!o.blank_line_documents) {
            emit({line, {}});
          } else if (line.find_first_not_of(" \t") == std::string::npos) {
            if (!pending.empty()) emit({std::move(pending), {}});
            pending.clear();
          } else {
            pending += pending.empty() ? line : "\n" + line;
          }
          break;
        case CorpusFormat::kJsonl:
        case CorpusFormat::kJsonlPairs: {
          if (line.find_first_not_of(" \t") == std::string::npos) {
            ++stats.skipped_empty;
            break;
          }
          nlohmann::json j;
          try {
            j = nlohmann::json::parse(line);
          } catch (const nlohmann::json::exception& e) {
            throw InputError(where(file, line_no) + ": not valid JSON: " + e.what());
          }
          if (o.format == CorpusFormat::kJsonl) {
            emit({json_string_field(j, o.text_field, where(file, line_no)), {}});
          } else {
            emit({json_string_field(j, o.input_field, where(file, line_no)),
                  json_string_field(j, o.target_field, where(file, line_no))});
          }
          break;
        }
        case CorpusFormat::kTsvPairs: {
          if (line.empty()) {
            ++stats.skipped_empty;
            break;
          }
          auto tab = line.find('\t');
          if (tab == std::string::npos) throw InputError(where(file, line_no) + ": expected input<TAB>target, found no tab");
          emit({line.substr(0, tab), line.substr(tab + 1)});
          break;
        }
      }
    }
    if (!pending.empty()) emit({std::move(pending), {}});
  }
  if (stats.documents == 0) {
    std::string names;
    for (const auto& f : o.files) names += (names.empty() ? "" : ", ") + f;
    throw InputError(names + ": corpus holds no usable document (" + std::to_string(stats.lines) + " lines, " +
                     std::to_string(stats.skipped_empty) + " empty, " + std::to_string(stats.skipped_invalid_utf8) +
                     " not UTF-8)");
  }
  return stats;
}

}  // namespace distill
