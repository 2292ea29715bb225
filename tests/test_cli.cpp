// The distill binary end to end: inspect and forward, and the errors a user sees.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/tokenizer.h"
#include "models/kernels/native_bf16.h"
#include "models/io/atomic_file.h"
#include "models/io/safetensors.h"
#include "tests/test_util.h"

namespace distill {
namespace {

using nlohmann::json;
using test::run_distill;
namespace fs = std::filesystem;

json golden() { return json::parse(read_text_file(test::fixture("switch-tiny-4/golden.json"))); }

TEST(CliInspect, JsonCountsMatchTheHandCount) {
  std::string out, err;
  ASSERT_EQ(run_distill("inspect " + test::fixture("switch-tiny-4") + " --json", &out, &err), 0) << err;
  auto j = json::parse(out);
  EXPECT_EQ(j["parameters"]["total"], 296448);
  EXPECT_EQ(j["parameters"]["expert"], 131072);
  EXPECT_EQ(j["parameters"]["active_per_token"], 296448 - 131072 + 2 * 16384);
  EXPECT_EQ(j["experts"], 4);
  EXPECT_EQ(j["sparse_layers"], json({"encoder.block.1.layer.1", "decoder.block.1.layer.2"}));
  EXPECT_EQ(j["routing"]["capacity_mode"], "fixed");
  EXPECT_GT(j["flops"]["forward_per_token"].get<double>(), 0);
}

TEST(CliInspect, TextReport) {
  std::string out, err;
  ASSERT_EQ(run_distill("inspect " + test::fixture("t5-student-from-switch-tiny-4"), &out, &err), 0) << err;
  EXPECT_NE(out.find("197632"), std::string::npos) << out;
  EXPECT_NE(out.find("dense model"), std::string::npos) << out;
}

TEST(CliForward, MatchesTheGoldens) {
  test::TempDir dir;
  auto g = golden();
  json in = {{"input_ids", g["input_ids"]}, {"attention_mask", g["attention_mask"]},
             {"decoder_input_ids", g["decoder_input_ids"]}, {"labels", g["labels"]}};
  write_text_atomic(dir.file("in.json"), in.dump());
  std::string out, err;
  ASSERT_EQ(run_distill("forward --model " + test::fixture("switch-tiny-4") + " --inputs " + dir.file("in.json") +
                            " --output " + dir.file("out.safetensors"),
                        &out, &err),
            0)
      << err;
  auto losses = json::parse(out);
  for (const char* k : {"ce_loss", "encoder_aux_loss", "encoder_z_loss", "decoder_aux_loss", "decoder_z_loss"}) {
    EXPECT_NEAR(losses[k].get<double>(), g["losses_hf"][k].get<double>(), 1e-4 * g["losses_hf"][k].get<double>()) << k;
  }
  auto got = SafetensorsFile(dir.file("out.safetensors")).load_all();
  auto want = test::load_fixture_tensors("switch-tiny-4/golden.safetensors");
  EXPECT_TRUE(test::tensors_close(got.at("logits"), want.at("logits")));
  EXPECT_TRUE(test::tensors_close(got.at("encoder_last_hidden_state"), want.at("encoder_last_hidden_state")));
  for (const char* p : {"encoder.block.1.layer.1.", "decoder.block.1.layer.2."}) {
    EXPECT_TRUE(test::tensors_close(got.at(std::string(p) + "router_logits"), want.at(std::string(p) + "router_logits")));
    EXPECT_TRUE(torch::equal(got.at(std::string(p) + "expert_choice"), want.at(std::string(p) + "expert_choice")));
    EXPECT_TRUE(torch::equal(got.at(std::string(p) + "kept"), want.at(std::string(p) + "kept")));
  }
}

struct BadInput {
  const char* name;
  const char* json;
  const char* message;
};

TEST(CliForward, BadInputsAreClearErrors) {
  test::TempDir dir;
  const BadInput cases[] = {
      {"not json", "{\"input_ids\": [[1, 2]", "not valid JSON"},
      {"no ids", "{\"labels\": [[1]]}", "missing \"input_ids\""},
      {"ragged", "{\"input_ids\": [[1, 2], [3]], \"labels\": [[1]]}", "must be rectangular: row 1 has 1 entries"},
      {"float id", "{\"input_ids\": [[1.5]], \"labels\": [[1]]}", "expected integers"},
      {"out of vocab", "{\"input_ids\": [[1, 999]], \"labels\": [[1]]}", "input_ids holds 999, outside [0, 512)"},
      {"bad label", "{\"input_ids\": [[1]], \"labels\": [[-5]]}", "labels holds -5"},
      {"no decoder", "{\"input_ids\": [[1]]}", "needs \"decoder_input_ids\" or \"labels\""},
      {"mask shape", "{\"input_ids\": [[1, 2]], \"attention_mask\": [[1]], \"labels\": [[1]]}", "attention_mask must have the shape of input_ids"},
      {"batch", "{\"input_ids\": [[1], [2]], \"labels\": [[1]]}", "differ in batch size"},
  };
  for (const auto& c : cases) {
    write_text_atomic(dir.file("in.json"), c.json);
    std::string out, err;
    int code = run_distill("forward --model " + test::fixture("switch-tiny-4") + " --inputs " + dir.file("in.json") +
                               " --output " + dir.file("out.safetensors"),
                           &out, &err);
    EXPECT_EQ(code, 1) << c.name << ": " << err;
    EXPECT_NE(err.find(c.message), std::string::npos) << c.name << ": " << err;
    EXPECT_NE(err.find("in.json"), std::string::npos) << c.name << ": " << err;
    EXPECT_FALSE(fs::exists(dir.file("out.safetensors"))) << c.name;
  }
}

TEST(CliForward, BadCheckpointIsNamed) {
  test::TempDir dir;
  fs::copy(test::fixture("switch-tiny-4"), dir.file("m"));
  fs::permissions(dir.file("m/model.safetensors"), fs::perms::owner_write, fs::perm_options::add);
  fs::resize_file(dir.file("m/model.safetensors"), 100000);
  auto g = golden();
  write_text_atomic(dir.file("in.json"), json({{"input_ids", g["input_ids"]}, {"labels", g["labels"]}}).dump());
  std::string err;
  EXPECT_EQ(run_distill("forward --model " + dir.file("m") + " --inputs " + dir.file("in.json") + " --output " +
                            dir.file("out.safetensors"),
                        nullptr, &err),
            1);
  EXPECT_NE(err.find("m/model.safetensors"), std::string::npos) << err;
  EXPECT_NE(err.find("out of bounds"), std::string::npos) << err;
}

TEST(CliUsage, UnknownCommandsAndMissingArguments) {
  std::string err;
  EXPECT_NE(run_distill("frobnicate", nullptr, &err), 0);
  EXPECT_NE(run_distill("forward --model x", nullptr, &err), 0);
  EXPECT_NE(err.find("--inputs"), std::string::npos) << err;
  EXPECT_EQ(run_distill("inspect /nonexistent", nullptr, &err), 1);
  EXPECT_NE(err.find("/nonexistent/config.json"), std::string::npos) << err;
}

}  // namespace
}  // namespace distill

namespace distill {
namespace {

TEST(CliUsage, BadSgemmChoiceIsAClearError) {
  std::string err;
  EXPECT_EQ(run_distill("inspect " + test::fixture("switch-tiny-4"), nullptr, &err, "DISTILL_SGEMM=mkl"), 1);
  EXPECT_NE(err.find("DISTILL_SGEMM=\"mkl\": expected \"onednn\" or \"openblas\""), std::string::npos) << err;
  EXPECT_EQ(run_distill("inspect " + test::fixture("switch-tiny-4"), nullptr, &err, "DISTILL_SGEMM=openblas"), 0) << err;
}

// `distill bench --json` on a tiny shape: the documented keys, and a step breakdown whose parts
// add up to the step (products on all threads, per-head and per-expert products, the rest).
TEST(CliBench, JsonKeepsItsKeysAndTheBreakdownAddsUp) {
  std::string out, err;
  ASSERT_EQ(run_distill("bench --d-model 32 --d-ff 64 --d-kv 8 --experts 2 --batch 2 --vocab 64 --warmup 0 --repeats 2 --json",
                        &out, &err),
            0)
      << err;
  const auto j = json::parse(out);
  for (const char* key : {"distill_step_ms", "teacher_tokens_per_s", "switch_vs_dense_ratio", "cached_vs_student_ratio",
                          "matmul_peak_gflops_fp32", "matmul_peak_gflops_bf16", "mfu", "student_step_mfu", "peak_rss_mb",
                          "distill_tokens_per_s", "timings", "shape", "sgemm", "blas_kernels", "cpu", "step_breakdown"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["native_bf16"], native_bf16_products());  // what the bf16 keys' auto picks on this CPU
  const auto& b = j["step_breakdown"];
  EXPECT_EQ(b["steps"], 3);
  const double step = b["step_ms"], products = b["products_ms"], nested = b["nested_products_ms"], other = b["other_ms"];
  EXPECT_GT(step, 0);
  EXPECT_GT(products, 0);  // the projections and the LM head
  EXPECT_GE(nested, 0);
  EXPECT_GT(b["products_gflops"].get<double>(), 0);
  EXPECT_NEAR(products + nested + other, step, 1e-6 * step);
  EXPECT_LT(products + nested, step * 1.05);  // timed inside the step; thread time / threads is an estimate
}

TEST(CliTokenizer, EncodeMatchesTheGoldenIds) {
  std::string out, err;
  ASSERT_EQ(run_distill("tokenizer encode --model " + test::fixture("switch-tiny-4") +
                            " --text 'Free software is a matter of liberty.'",
                        &out, &err),
            0)
      << err;
  EXPECT_EQ(out, "204 111 36 11 92 95 108 9 3 14 12 56 34 16 32 8 1\n");
  // Special tokens written in the text are their ids (issue 14.1), here at the start and end.
  ASSERT_EQ(run_distill("tokenizer encode --model " + test::fixture("switch-tiny-4") +
                            " --text '<pad>Free software is a matter of liberty.</s>'",
                        &out, &err),
            0)
      << err;
  EXPECT_EQ(out, "0 204 111 36 11 92 95 108 9 3 14 12 56 34 16 32 8 1 1\n");
}

TEST(CliTokenizer, TrainWritesAModelAndRejectsTinyVocabularies) {
  test::TempDir dir;
  {
    std::ofstream f(dir.file("c.txt"));
    for (int i = 0; i < 200; ++i) f << "the state of the union is strong and the budget " << i << " is balanced\n";
  }
  std::string out, err;
  ASSERT_EQ(run_distill("tokenizer train --input " + dir.file("c.txt") + " --vocab-size 60 --sentinels 10 --output " +
                            dir.file("tok"),
                        &out, &err),
            0)
      << err;
  EXPECT_NE(out.find("50 pieces + 10 sentinels = 60 ids"), std::string::npos) << out;
  EXPECT_TRUE(fs::exists(dir.file("tok/spiece.model")));
  EXPECT_EQ(run_distill("tokenizer train --input " + dir.file("c.txt") + " --vocab-size 50 --output " + dir.file("t2"),
                        &out, &err),
            1);
  EXPECT_NE(err.find("need at least 16"), std::string::npos) << err;
  EXPECT_NE(run_distill("tokenizer train --input /nonexistent.txt --vocab-size 500 --output " + dir.file("t3"), &out, &err), 0);
  // Issue 13, class 7: an output directory with spaces and an option-like name cannot reach
  // SentencePiece's option string.
  const std::string odd = dir.file("my tokenizer --vocab_size=5");
  ASSERT_EQ(run_distill("tokenizer train --input " + dir.file("c.txt") + " --vocab-size 60 --sentinels 10 --output '" + odd + "'",
                        &out, &err),
            0)
      << err;
  EXPECT_TRUE(fs::exists(odd + "/spiece.model"));
  EXPECT_NE(out.find("50 pieces + 10 sentinels = 60 ids"), std::string::npos) << out;
}

TEST(CliTokenizer, BrokenWrapperIsAClearError) {
  test::TempDir dir;
  std::ofstream(dir.file("libdistill_spm.so")) << "not a library";
  std::string err;
  EXPECT_EQ(run_distill("tokenizer encode --model " + test::fixture("switch-tiny-4") + " --text hi", nullptr, &err,
                        "DISTILL_SPM_LIBRARY=" + dir.file("libdistill_spm.so")),
            1);
  EXPECT_NE(err.find("cannot load the SentencePiece wrapper"), std::string::npos) << err;
}

TEST(CliGenerate, TextInTextOut) {
  std::string out, err;
  ASSERT_EQ(run_distill("generate --model " + test::fixture("switch-tiny-4") +
                            " --text 'The licensee may copy and distribute the program.' --max-new-tokens 8",
                        &out, &err),
            0)
      << err;
  // The fixture's greedy ids are [0, 418 x 8]: the text is piece 418 eight times.
  auto t = Tokenizer::load(test::fixture("switch-tiny-4"));
  EXPECT_EQ(out, t.decode(std::vector<int64_t>(8, 418)) + "\n");
}

TEST(CliEval, GenerateScoresPairsAsTheTasksMetric) {
  // Text classification written as text-to-text, in JSONL pairs: accuracy and the share of
  // predictions that are no label; the same predictions with and without the key/value cache.
  test::TempDir dir;
  write_text_atomic(dir.file("mail.jsonl"), "{\"input\": \"win money now\", \"target\": \"spam\"}\n"
                                            "{\"input\": \"meeting at noon\", \"target\": \"ham\"}\n"
                                            "{\"input\": \"cheap pills\", \"target\": \"spam\"}\n");
  const std::string cmd = "eval --generate --classification --model " + test::fixture("switch-tiny-4") + " --data " +
                          dir.file("mail.jsonl") + " --format jsonl_pairs --max-new-tokens 6 --batch-size 2";
  std::string out, err;
  ASSERT_EQ(run_distill(cmd + " --predictions " + dir.file("cached.tsv"), &out, &err), 0) << err;
  for (const char* line : {"3 examples", "exact match", "token error rate", "character error rate", "accuracy",
                           "predictions that are no label", "examples/s"}) {
    EXPECT_NE(out.find(line), std::string::npos) << line << "\n" << out;
  }
  ASSERT_EQ(run_distill(cmd + " --no-cache --json --predictions " + dir.file("uncached.tsv"), &out, &err), 0) << err;
  const auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["examples"], 3);
  EXPECT_TRUE(j["accuracy"]["value"].is_number());
  EXPECT_FALSE(j["decoding"]["cache"].get<bool>());
  EXPECT_EQ(read_text_file(dir.file("cached.tsv")), read_text_file(dir.file("uncached.tsv")));
  // Scoring needs pairs: a text corpus is one error naming the option.
  EXPECT_EQ(run_distill("eval --generate --model " + test::fixture("switch-tiny-4") + " --data " + dir.file("mail.jsonl") +
                            " --format text", &out, &err), 1);
  EXPECT_NE(err.find("--format tsv or jsonl_pairs"), std::string::npos) << err;
}

TEST(CliConfig, ShippedConfigsAreValid) {
  // The README's commands run these; a renamed key must not break them silently.
  for (const char* config : {"configs/demo.yaml", "configs/tiny.yaml", "configs/g2p.yaml"}) {
    std::string out, err;
    EXPECT_EQ(run_distill(std::string("config check ") + config, &out, &err), 0) << config << ": " << err;
  }
  // --no-bf16: float32 whatever the CPU, also over an explicit true or auto.
  std::string out, err;
  ASSERT_EQ(run_distill("config check configs/tiny.yaml --set training.bf16=auto --set teacher.train_bf16=true --no-bf16", &out,
                        &err), 0) << err;
  EXPECT_EQ(out.find("bf16: true"), std::string::npos) << out;
  EXPECT_NE(out.find("teacher:"), std::string::npos);
  size_t off = 0;
  for (size_t at = out.find("bf16: false"); at != std::string::npos; at = out.find("bf16: false", at + 1)) ++off;
  EXPECT_EQ(off, 3u) << out;  // training.bf16, teacher.bf16, teacher.train_bf16
  // The default: the CPU decides for every model, trained here or frozen.
  ASSERT_EQ(run_distill("config check configs/tiny.yaml", &out, &err), 0) << err;
  const std::string chosen = native_bf16_products() ? "bf16: true" : "bf16: false";
  size_t as_cpu = 0;
  for (size_t at = out.find(chosen); at != std::string::npos; at = out.find(chosen, at + 1)) ++as_cpu;
  EXPECT_EQ(as_cpu, 3u) << out;  // training.bf16, teacher.bf16, teacher.train_bf16
  // The Hugging Face example needs the downloaded checkpoint; without it, the one error names it.
  if (!fs::exists(std::string(DISTILL_SOURCE_DIR) + "/models/switch-base-8/config.json")) {
    EXPECT_EQ(run_distill("config check configs/switch-base-8-to-t5-base.yaml", &out, &err), 1);
    EXPECT_NE(err.find("teacher.path names models/switch-base-8"), std::string::npos) << err;
  }
}


// ---- Hugging Face both ways (issue 14) ----

// forward's JSON and tensors on the golden inputs, for a model directory.
std::pair<json, std::map<std::string, at::Tensor>> forward_on_goldens(const std::string& model, const test::TempDir& dir,
                                                                      const std::string& tag) {
  auto g = golden();
  json in = {{"input_ids", g["input_ids"]}, {"attention_mask", g["attention_mask"]},
             {"decoder_input_ids", g["decoder_input_ids"]}, {"labels", g["labels"]}};
  write_text_atomic(dir.file("in.json"), in.dump());
  std::string out, err;
  EXPECT_EQ(run_distill("forward --model " + model + " --inputs " + dir.file("in.json") + " --output " + dir.file(tag + ".safetensors"),
                        &out, &err),
            0)
      << err;
  if (out.empty()) return {};
  return {json::parse(out), SafetensorsFile(dir.file(tag + ".safetensors")).load_all()};
}

TEST(CliTorchBin, InspectAndForwardReadPytorchModelBinLikeTheSafetensorsCopy) {
  test::TempDir dir;
  std::string a, b, err;
  ASSERT_EQ(run_distill("inspect --json " + test::fixture("switch-tiny-4"), &a, &err), 0) << err;
  ASSERT_EQ(run_distill("inspect --json " + test::fixture("switch-tiny-4-bin"), &b, &err), 0) << err;
  auto ja = json::parse(a), jb = json::parse(b);
  EXPECT_NE(jb["weights"].get<std::string>().find("pytorch_model.bin"), std::string::npos);
  ja.erase("weights");
  jb.erase("weights");
  EXPECT_EQ(ja, jb);
  const auto [la, ta] = forward_on_goldens(test::fixture("switch-tiny-4"), dir, "st");
  for (const std::string& model : {test::fixture("switch-tiny-4-bin"), test::fixture("torch-bin/sharded")}) {
    const auto [lb, tb] = forward_on_goldens(model, dir, "bin");
    EXPECT_EQ(la, lb) << model;
    for (const auto& [name, t] : ta) EXPECT_TRUE(torch::equal(t, tb.at(name))) << model << " " << name;
  }
  EXPECT_EQ(la["router_loss"], "paper");
}

TEST(CliTorchBin, AMaliciousPickleIsExitOneNamingTheGlobal) {
  test::TempDir dir;
  fs::create_directories(dir.file("m"));
  fs::copy_file(test::fixture("switch-tiny-4/config.json"), dir.file("m/config.json"));
  fs::copy_file(test::fixture("torch-bin/evil.bin"), dir.file("m/pytorch_model.bin"));
  std::filesystem::remove("/tmp/distill-pickle-ran");
  std::string out, err;
  write_text_atomic(dir.file("in.json"), R"({"input_ids": [[5, 6, 1]], "labels": [[7, 1]]})");
  EXPECT_EQ(run_distill("forward --model " + dir.file("m") + " --inputs " + dir.file("in.json") + " --output " + dir.file("o.safetensors"), &out, &err), 1);
  EXPECT_NE(err.find("refused global posix.system"), std::string::npos) << err;
  EXPECT_EQ(run_distill("convert " + dir.file("m") + " " + dir.file("out"), &out, &err), 1);
  EXPECT_NE(err.find("refused global posix.system"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(dir.file("out")));
  EXPECT_FALSE(fs::exists(dir.file("out.tmp")));
  EXPECT_FALSE(fs::exists("/tmp/distill-pickle-ran"));
}

TEST(CliTorchBin, ConvertWritesSafetensorsWithTheSameTensorsAndFiles) {
  test::TempDir dir;
  std::string out, err;
  ASSERT_EQ(run_distill("convert " + test::fixture("torch-bin/sharded") + " " + dir.file("st"), &out, &err), 0) << err;
  EXPECT_TRUE(fs::exists(dir.file("st/model.safetensors")));
  EXPECT_FALSE(fs::exists(dir.file("st/pytorch_model.bin.index.json")));
  for (const char* f : {"config.json", "spiece.model", "tokenizer_config.json"}) EXPECT_TRUE(fs::exists(dir.file(std::string("st/") + f))) << f;
  const auto want = load_model_tensors(test::fixture("switch-tiny-4"));
  const auto got = load_model_tensors(dir.file("st"));
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, t] : want) EXPECT_TRUE(torch::equal(got.at(name), t)) << name;
  EXPECT_EQ(run_distill("convert " + dir.file("st") + " " + dir.file("st"), &out, &err), 1);
  EXPECT_NE(err.find("is the source directory"), std::string::npos) << err;
}

TEST(CliExport, AFactorCapacityTeacherExportsWithTheFixedRuleHuggingFaceApplies) {
  // A teacher trained with the paper's per-batch capacity (distill's keys, which Hugging Face
  // ignores), exported with a fixed per-sequence capacity.
  test::TempDir dir;
  fs::create_directories(dir.file("factor"));
  for (const auto& e : fs::directory_iterator(test::fixture("switch-tiny-4"))) fs::copy_file(e.path(), dir.file("factor") + "/" + e.path().filename().string());
  auto cfg = json::parse(read_text_file(dir.file("factor/config.json")));
  cfg["capacity_mode"] = "factor";
  cfg["capacity_factor_eval"] = 0.5;
  fs::remove(dir.file("factor/config.json"));
  write_text_atomic(dir.file("factor/config.json"), cfg.dump());
  std::string out, err;
  ASSERT_EQ(run_distill("inspect " + dir.file("factor"), &out, &err), 0) << err;
  EXPECT_NE(out.find("Hugging Face runs it differently"), std::string::npos) << out;
  EXPECT_NE(out.find("capacity factor 0.5"), std::string::npos) << out;

  // With capacity 64 nothing overflows: Hugging Face's goldens.
  ASSERT_EQ(run_distill("export " + dir.file("factor") + " " + dir.file("hf"), &out, &err), 0) << err;
  auto exported = json::parse(read_text_file(dir.file("hf/config.json")));
  EXPECT_EQ(exported["capacity_mode"], "fixed");
  EXPECT_EQ(exported["expert_capacity"], 64);
  EXPECT_TRUE(fs::exists(dir.file("hf/spiece.model")));
  EXPECT_NE(read_text_file(dir.file("hf/README.md")).find("outputs match while no expert overflows"), std::string::npos);
  auto gen = json::parse(read_text_file(dir.file("hf/generation_config.json")));
  EXPECT_EQ(gen["suppress_tokens"], json::array({0}));
  const auto [losses, t] = forward_on_goldens(dir.file("hf"), dir, "hf");
  const auto want = test::load_fixture_tensors("switch-tiny-4/golden.safetensors");
  EXPECT_TRUE(test::tensors_close(t.at("logits"), want.at("logits")));
  for (const char* p : {"encoder.block.1.layer.1.", "decoder.block.1.layer.2."}) {
    EXPECT_TRUE(torch::equal(t.at(std::string(p) + "kept"), want.at(std::string(p) + "kept"))) << p;
    EXPECT_TRUE(torch::equal(t.at(std::string(p) + "expert_choice"), want.at(std::string(p) + "expert_choice"))) << p;
  }

  // With capacity 2 experts overflow: the tokens kept are Hugging Face's rule, each sequence's
  // first 2 per expert in position order (token_priority = cumsum(one_hot) <= capacity).
  ASSERT_EQ(run_distill("export " + dir.file("factor") + " " + dir.file("hf2") + " --expert-capacity 2", &out, &err), 0) << err;
  const auto [l2, t2] = forward_on_goldens(dir.file("hf2"), dir, "hf2");
  for (const char* p : {"encoder.block.1.layer.1.", "decoder.block.1.layer.2."}) {
    const auto choice = t2.at(std::string(p) + "expert_choice");  // the decoder's differ: its memory did
    const auto priority = torch::one_hot(choice, 4).cumsum(1);  // [B, S, E]
    const auto hf_kept = (priority.gather(2, choice.unsqueeze(-1)).squeeze(-1) <= 2).to(torch::kLong);
    EXPECT_TRUE(torch::equal(t2.at(std::string(p) + "kept"), hf_kept)) << p;
    EXPECT_LT(hf_kept.sum().item<int64_t>(), hf_kept.numel()) << p;  // the capacity binds
  }
}

TEST(CliExport, ATopTwoTeacherIsRefusedUnlessDifferencesAreAllowed) {
  test::TempDir dir;
  fs::create_directories(dir.file("top2"));
  for (const auto& e : fs::directory_iterator(test::fixture("switch-tiny-4"))) fs::copy_file(e.path(), dir.file("top2") + "/" + e.path().filename().string());
  auto cfg = json::parse(read_text_file(dir.file("top2/config.json")));
  cfg["router_top_k"] = 2;
  fs::remove(dir.file("top2/config.json"));
  write_text_atomic(dir.file("top2/config.json"), cfg.dump());
  std::string out, err;
  EXPECT_EQ(run_distill("export " + dir.file("top2") + " " + dir.file("hf"), &out, &err), 1);
  EXPECT_NE(err.find("Hugging Face's Switch routes top-1 only"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(dir.file("hf")));
  ASSERT_EQ(run_distill("export " + dir.file("top2") + " " + dir.file("hf") + " --allow-differences", &out, &err), 0) << err;
  EXPECT_NE(read_text_file(dir.file("hf/README.md")).find("routes top-2: its outputs differ"), std::string::npos);
}

}  // namespace
}  // namespace distill
