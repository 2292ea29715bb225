#include "data/tokenizer.h"

#include <dlfcn.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>

#include "data/spm/spm_c.h"
#include "models/io/atomic_file.h"
#include "models/errors.h"

namespace distill {
namespace fs = std::filesystem;

namespace {

// The dlopen'ed wrapper: resolved once per process.
struct SpmLibrary {
  std::string path;
  decltype(&distill_spm_load) load = nullptr;
  decltype(&distill_spm_free) free = nullptr;
  decltype(&distill_spm_vocab_size) vocab_size = nullptr;
  decltype(&distill_spm_piece_to_id) piece_to_id = nullptr;
  decltype(&distill_spm_id_to_piece) id_to_piece = nullptr;
  decltype(&distill_spm_encode) encode = nullptr;
  decltype(&distill_spm_decode) decode = nullptr;
  decltype(&distill_spm_train) train = nullptr;
};

std::vector<std::string> candidate_paths() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("DISTILL_SPM_LIBRARY")) return {env};  // explicit choice, no fallback
  std::error_code ec;
  auto exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) out.push_back((exe.parent_path() / "libdistill_spm.so").string());
#ifdef DISTILL_SPM_LIBRARY_PATH
  out.emplace_back(DISTILL_SPM_LIBRARY_PATH);
#endif
  return out;
}

const SpmLibrary& spm() {
  static SpmLibrary lib;
  static std::once_flag once;
  static std::string error;
  std::call_once(once, [] {
    std::string tried;
    void* h = nullptr;
    for (const auto& p : candidate_paths()) {
      if (!fs::exists(p)) {
        tried += "\n  " + p + " (not found)";
        continue;
      }
      // DEEPBIND: the wrapper resolves protobuf symbols against its own dependencies first.
      h = ::dlopen(p.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (h) {
        lib.path = p;
        break;
      }
      tried += "\n  " + p + " (" + ::dlerror() + ")";
    }
    if (!h) {
      error = "cannot load the SentencePiece wrapper libdistill_spm.so; tried:" + tried +
              "\nbuild it (cmake --build build) or point DISTILL_SPM_LIBRARY at it";
      return;
    }
    auto sym = [&](const char* name) {
      void* s = ::dlsym(h, name);
      if (!s && error.empty()) error = lib.path + ": broken SentencePiece wrapper, symbol " + name + " missing";
      return s;
    };
    lib.load = reinterpret_cast<decltype(lib.load)>(sym("distill_spm_load"));
    lib.free = reinterpret_cast<decltype(lib.free)>(sym("distill_spm_free"));
    lib.vocab_size = reinterpret_cast<decltype(lib.vocab_size)>(sym("distill_spm_vocab_size"));
    lib.piece_to_id = reinterpret_cast<decltype(lib.piece_to_id)>(sym("distill_spm_piece_to_id"));
    lib.id_to_piece = reinterpret_cast<decltype(lib.id_to_piece)>(sym("distill_spm_id_to_piece"));
    lib.encode = reinterpret_cast<decltype(lib.encode)>(sym("distill_spm_encode"));
    lib.decode = reinterpret_cast<decltype(lib.decode)>(sym("distill_spm_decode"));
    lib.train = reinterpret_cast<decltype(lib.train)>(sym("distill_spm_train"));
  });
  if (!error.empty()) throw Error(error);
  return lib;
}

constexpr int64_t kMaxExtraIds = 1 << 20;

int64_t extra_ids_from_config(const fs::path& dir) {
  const fs::path cfg = dir / "tokenizer_config.json";
  if (!fs::exists(cfg)) return 100;  // Hugging Face T5Tokenizer's default
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(cfg.string()));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(cfg.string() + ": not valid JSON: " + e.what());
  }
  if (!j.contains("extra_ids")) return 100;
  // Bounded: the sentinels become vocabulary rows and lookup tables.
  if (!j["extra_ids"].is_number_integer() || j["extra_ids"].get<int64_t>() < 0 || j["extra_ids"].get<int64_t>() > kMaxExtraIds) {
    throw InputError(cfg.string() + ": \"extra_ids\" must be an integer in [0, " + std::to_string(kMaxExtraIds) + "]");
  }
  return j["extra_ids"].get<int64_t>();
}

}  // namespace

struct Tokenizer::Handle {
  distill_spm* spm = nullptr;
  ~Handle() {
    if (spm) ::distill::spm().free(spm);
  }
};

std::string spm_library_path() { return spm().path; }

Tokenizer Tokenizer::load(const std::string& model, int64_t extra_ids) {
  fs::path file(model);
  if (fs::is_directory(file)) {
    if (extra_ids < 0) extra_ids = extra_ids_from_config(file);
    file /= "spiece.model";
  } else if (extra_ids < 0) {
    extra_ids = extra_ids_from_config(file.parent_path());
  }
  if (!fs::exists(file)) throw InputError(file.string() + ": SentencePiece model not found");
  if (extra_ids > kMaxExtraIds) {
    throw InputError(file.string() + ": " + std::to_string(extra_ids) + " sentinels, more than " + std::to_string(kMaxExtraIds));
  }
  const auto& lib = spm();
  Tokenizer t;
  t.handle_ = std::make_shared<Handle>();
  char err[1024] = {0};
  if (lib.load(file.c_str(), &t.handle_->spm, err, sizeof err) != 0) {
    throw InputError(file.string() + ": not a SentencePiece model: " + err);
  }
  t.model_file_ = file.string();
  t.pieces_ = lib.vocab_size(t.handle_->spm);
  t.extra_ids_ = extra_ids;
  t.pad_id_ = lib.piece_to_id(t.handle_->spm, "<pad>");
  t.eos_id_ = lib.piece_to_id(t.handle_->spm, "</s>");
  t.unk_id_ = lib.piece_to_id(t.handle_->spm, "<unk>");
  if (t.pad_id_ != 0 || t.eos_id_ != 1 || t.unk_id_ != 2) {
    throw InputError(file.string() + ": expected T5's special ids <pad>=0 </s>=1 <unk>=2, found " +
                     std::to_string(t.pad_id_) + ", " + std::to_string(t.eos_id_) + ", " + std::to_string(t.unk_id_));
  }
  return t;
}

void Tokenizer::encode_pieces(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  const auto& lib = spm();
  std::vector<int> ids(text.size() + 8);  // a piece covers at least one byte
  size_t n = 0;
  char err[512] = {0};
  if (lib.encode(handle_->spm, text.data(), text.size(), ids.data(), ids.size(), &n, err, sizeof err) != 0) {
    throw InputError(model_file_ + ": encoding failed: " + err);
  }
  if (n > ids.size()) {
    ids.resize(n);
    lib.encode(handle_->spm, text.data(), text.size(), ids.data(), ids.size(), &n, err, sizeof err);
  }
  out.insert(out.end(), ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(n));
}

Tokenizer::Special Tokenizer::special_at(std::string_view text) const {
  // text starts with '<'.
  static constexpr std::pair<std::string_view, int64_t Tokenizer::*> kFixed[] = {
      {"<pad>", &Tokenizer::pad_id_}, {"</s>", &Tokenizer::eos_id_}, {"<unk>", &Tokenizer::unk_id_}};
  for (const auto& [s, id] : kFixed) {
    if (text.substr(0, s.size()) == s) return {this->*id, s.size(), false};
  }
  constexpr std::string_view kSentinel = "<extra_id_";
  if (extra_ids_ == 0 || text.substr(0, kSentinel.size()) != kSentinel) return {};
  size_t end = kSentinel.size();
  int64_t n = 0;
  while (end < text.size() && end - kSentinel.size() < 8 && text[end] >= '0' && text[end] <= '9') {
    n = n * 10 + (text[end] - '0');
    ++end;
  }
  const size_t digits = end - kSentinel.size();
  if (digits == 0 || end >= text.size() || text[end] != '>') return {};
  if (digits > 1 && text[kSentinel.size()] == '0') return {};  // "<extra_id_01>" is not a sentinel
  if (n >= extra_ids_) return {};
  return {sentinel(n), end + 1, true};
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_eos) const {
  // Hugging Face's T5Tokenizer (legacy mode): special-token strings are cut out of the text and
  // become their ids; each stretch between them is encoded on its own. A sentinel also takes the
  // whitespace on both sides with it (its AddedToken has lstrip and rstrip).
  auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  size_t start = 0;  // first byte not yet encoded
  for (size_t pos = text.find('<'); pos != std::string_view::npos; pos = text.find('<', pos)) {
    const Special s = special_at(text.substr(pos));
    if (s.length == 0) {
      ++pos;
      continue;
    }
    size_t end = pos;
    if (s.strip)
      while (end > start && is_space(text[end - 1])) --end;
    encode_pieces(text.substr(start, end - start), out);
    out.push_back(static_cast<int32_t>(s.id));
    pos += s.length;
    if (s.strip)
      while (pos < text.size() && is_space(text[pos])) ++pos;
    start = pos;
  }
  encode_pieces(text.substr(start), out);
  if (add_eos) out.push_back(static_cast<int32_t>(eos_id_));
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  std::vector<int> keep;
  for (auto id : ids) {
    if (id == pad_id_ || id == eos_id_ || id < 0 || id >= pieces_) continue;  // specials, sentinels
    keep.push_back(static_cast<int>(id));
  }
  std::string out(keep.size() * 16 + 16, '\0');
  size_t n = 0;
  char err[512] = {0};
  const auto& lib = spm();
  if (lib.decode(handle_->spm, keep.data(), keep.size(), out.data(), out.size(), &n, err, sizeof err) != 0) {
    throw InputError(model_file_ + ": decoding failed: " + err);
  }
  if (n > out.size()) {
    out.resize(n);
    lib.decode(handle_->spm, keep.data(), keep.size(), out.data(), out.size(), &n, err, sizeof err);
  }
  out.resize(n);
  return out;
}

std::string Tokenizer::piece(int64_t id) const {
  if (id >= pieces_ && id < vocab_size()) return "<extra_id_" + std::to_string(vocab_size() - 1 - id) + ">";
  char buf[256];
  if (spm().id_to_piece(handle_->spm, static_cast<int>(id), buf, sizeof buf) < 0) return "<invalid>";
  return buf;
}

void train_tokenizer(const TokenizerTrainOptions& o) {
  if (o.inputs.empty()) throw InputError("tokenizer train: no input files given");
  if (o.num_sentinels < 0) throw InputError("tokenizer train: the number of sentinels must be >= 0");
  if (o.model_type != "unigram" && o.model_type != "bpe") {
    throw InputError("tokenizer train: model type \"" + o.model_type + "\" is not unigram or bpe");
  }
  // SentencePiece needs room for its 3 special pieces and some characters beyond the sentinels.
  const int64_t pieces = o.vocab_size - o.num_sentinels;
  if (pieces < 16) {
    throw InputError("tokenizer train: vocabulary size " + std::to_string(o.vocab_size) + " leaves " +
                     std::to_string(pieces) + " SentencePiece pieces after " + std::to_string(o.num_sentinels) +
                     " sentinels; need at least 16");
  }
  fs::create_directories(o.output_dir);
  // SentencePiece reads its options from one string split at spaces (and its input list at
  // commas), so its files live in a directory whose name we choose, never in the user's path.
  const fs::path work = fs::temp_directory_path() / ("distill-spm-" + std::to_string(::getpid()) + "-" +
                                                     std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
  if (work.string().find_first_of(" ,\t\n\"'") != std::string::npos) {
    throw InputError("tokenizer train: the temporary directory " + work.parent_path().string() +
                     " holds a space, comma or quote, which SentencePiece cannot take; set TMPDIR to a plain path");
  }
  fs::create_directories(work);
  struct RemoveWork {
    fs::path dir;
    ~RemoveWork() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } remove_work{work};
  // SentencePiece skips "sentences" over 4192 bytes, and our documents are whole speeches: cut
  // them at sentence ends into a temporary training file.
  const fs::path sentences = work / "sentences.txt";
  int64_t n_sentences = 0;
  {
    std::ofstream out(sentences);
    const auto add = [&](std::string_view line) {  // cut at sentence ends near 2000 bytes
      size_t start = 0;
      while (start < line.size()) {
        size_t end = std::min(line.size(), start + 2000);
        if (end < line.size()) {
          size_t cut = line.rfind(". ", end);
          if (cut != std::string_view::npos && cut > start) end = cut + 1;
        }
        std::string_view s = line.substr(start, end - start);
        while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
        if (!s.empty()) {
          out << s << '\n';
          ++n_sentences;
        }
        start = end;
      }
    };
    for (const auto& input : o.inputs) {
      if (const auto kind = non_regular_kind(input); !kind.empty()) throw InputError(input + ": is " + kind + ", not a text file");
      std::ifstream in(input);
      if (!in) throw InputError(input + ": cannot open tokenizer training input");
      std::string line;
      while (std::getline(in, line)) {
        // A tab separates the two sides of a pair (TSV): each is a sentence of its own.
        std::string_view rest(line);
        for (size_t tab; (tab = rest.find('\t')) != std::string_view::npos; rest.remove_prefix(tab + 1)) add(rest.substr(0, tab));
        add(rest);
      }
    }
  }
  if (n_sentences == 0) throw InputError("tokenizer train: the inputs hold no text");
  const fs::path prefix = work / "spm";
  std::string args = "--input=" + sentences.string() + " --model_prefix=" + prefix.string() +
                     " --vocab_size=" + std::to_string(pieces) + " --model_type=" + o.model_type +
                     " --pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1 --character_coverage=1.0" +
                     " --input_sentence_size=" + std::to_string(o.max_sentences) +
                     " --shuffle_input_sentence=true --num_threads=" + std::to_string(o.threads) +
                     " --minloglevel=2";
  char err[2048] = {0};
  if (spm().train(args.c_str(), err, sizeof err) != 0) {
    throw InputError("tokenizer train: SentencePiece failed: " + std::string(err));
  }
  // A copy, not a rename: the temporary directory may be on another file system.
  write_text_atomic((fs::path(o.output_dir) / "spiece.model").string(), read_text_file(prefix.string() + ".model"));
  nlohmann::json specials = nlohmann::json::array();
  for (int64_t i = 0; i < o.num_sentinels; ++i) specials.push_back("<extra_id_" + std::to_string(i) + ">");
  nlohmann::json cfg = {{"tokenizer_class", "T5Tokenizer"}, {"extra_ids", o.num_sentinels},
                        {"additional_special_tokens", specials}, {"eos_token", "</s>"},
                        {"pad_token", "<pad>"}, {"unk_token", "<unk>"}, {"model_max_length", 512},
                        {"legacy", true}};
  write_text_atomic((fs::path(o.output_dir) / "tokenizer_config.json").string(), cfg.dump(2) + "\n");
}

}  // namespace distill
