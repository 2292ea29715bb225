// Sweeps and the visual report: the sweep file's validation, the SVG plots (parsed as XML, their
// data counted), a tiny sweep end to end, `distill report`, and report.html in headless Chromium.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "distill/report/html_report.h"
#include "distill/report/svg_plots.h"
#include "distill/config/sweep_config.h"
#include "models/kernels/native_bf16.h"
#include "models/errors.h"
#include "models/io/atomic_file.h"
#include "tests/test_util.h"

namespace distill {
namespace {

using nlohmann::json;
using test::run_distill;
namespace fs = std::filesystem;

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (auto p = text.find(what); p != std::string::npos; p = text.find(what, p + what.size())) ++n;
  return n;
}

bool have_xmllint() { return std::system("command -v xmllint > /dev/null 2>&1") == 0; }

// Whether `path` is well-formed XML, by xmllint; message in *why.
bool parses_as_xml(const std::string& path, std::string* why) {
  const std::string log = path + ".xmllint";
  const int rc = std::system(("xmllint --noout '" + path + "' > '" + log + "' 2>&1").c_str());
  *why = read_text_file(log);
  fs::remove(log);
  return rc == 0;
}

// The tiny base every sweep test starts from (configs/tiny.yaml's scale), and its variants.
std::string tiny_sweep(const std::string& output, const std::string& variants) {
  return "output_dir: " + output + R"(
seed: 7
seeds: 2
data:
  tokenizer: {vocab_size: 1000, sentinels: 50, max_sentences: 5000}
  train: {files: [datasets/sotu/validation.txt]}
  validation_fraction: 0.2
  input_length: 64
  target_length: 16
  batch_size: 8
  eval_batches: 4
teacher:
  model: {d_model: 32, d_ff: 64, d_kv: 8, num_heads: 4, num_layers: 2, num_decoder_layers: 2, num_experts: 4, sparse_step: 2}
  steps: 30
training:
  steps: 20
  optimizer: {name: adamw, lr: 0.003}
  schedule: {name: linear_warmup, warmup_steps: 5}
  log_interval: 5
  eval_interval: 10
  checkpoint_interval: 0
sweep:
)" + variants;
}

std::string write(const test::TempDir& dir, const std::string& name, const std::string& text) {
  const std::string path = dir.file(name);
  std::ofstream(path) << text;
  return path;
}

// ---- the sweep file --------------------------------------------------------------------------

TEST(SweepConfig, VariantsGetTheirOwnDirectoriesAndShareTheStages) {
  test::TempDir dir;
  const auto cwd = fs::current_path();
  fs::current_path(DISTILL_SOURCE_DIR);  // the corpus path is relative to the source tree
  const auto path = write(dir, "s.yaml", tiny_sweep(dir.file("out"), R"(  variants:
    - {name: a}
    - {name: b, label: "B!", set: [student.init=concat_top_k, distillation.soft_loss=jsd], paper_percent: 29}
)"));
  const auto s = load_sweep_config(path, {"training.steps=7"});
  fs::current_path(cwd);
  ASSERT_EQ(s.variants.size(), 2u);
  EXPECT_EQ(s.variants[0].label, "a");
  EXPECT_EQ(s.variants[1].label, "B!");
  EXPECT_EQ(*s.variants[1].paper_percent, 29);
  EXPECT_EQ(s.variants[1].config.student.init, "concat_top_k");
  EXPECT_EQ(s.variants[1].config.distillation.soft_loss, "jsd");
  EXPECT_EQ(s.variants[0].config.student.init, "fresh");
  EXPECT_EQ(s.reference, "a");  // by default the first
  for (const auto& v : s.variants) {
    EXPECT_EQ(v.config.training.steps, 7);  // the command line's --set reaches every variant
    EXPECT_EQ(v.config.output_dir, dir.file("out/") + v.name);
    EXPECT_EQ(v.config.stages_dir, dir.file("out/stages"));
  }
}

TEST(SweepConfig, EveryProblemAtOnceNamingTheVariantAndLine) {
  test::TempDir dir;
  const auto cwd = fs::current_path();
  fs::current_path(DISTILL_SOURCE_DIR);
  const auto path = write(dir, "s.yaml", tiny_sweep(dir.file("out"), R"(  variants:
    - {name: a, sett: [training.steps=3]}
    - {name: a}
    - {name: "../up"}
    - {name: c, set: [student.init=medain]}
    - {name: d, set: [output_dir=elsewhere]}
  varients: []
  reference: zz
)"));
  std::string err;
  try {
    load_sweep_config(path);
  } catch (const ConfigError& e) {
    err = e.what();
  }
  fs::current_path(cwd);
  EXPECT_NE(err.find("7 problems"), std::string::npos) << err;
  EXPECT_NE(err.find("sweep.variants[4].set sets output_dir; a variant is written to OUTPUT/d"), std::string::npos) << err;
  EXPECT_NE(err.find("sweep.reference \"zz\" names no variant"), std::string::npos) << err;
  EXPECT_NE(err.find("s.yaml:24: unknown key \"sweep.variants[0].sett\" (did you mean \"sweep.variants[0].set\"?)"),
            std::string::npos) << err;
  EXPECT_NE(err.find("\"a\" is given twice"), std::string::npos) << err;
  EXPECT_NE(err.find("\"../up\" must be"), std::string::npos) << err;
  EXPECT_NE(err.find("variant \"c\" (" + path + ":27)"), std::string::npos) << err;
  EXPECT_NE(err.find("student.init must be one of"), std::string::npos) << err;
  EXPECT_NE(err.find("unknown key \"sweep.varients\" (did you mean \"sweep.variants\"?)"), std::string::npos) << err;

  // A run configuration is not a sweep; a sweep's base problems come first, as a run's.
  const auto run = write(dir, "r.yaml", "output_dir: x\ndata: {train: {files: [nope.txt]}}\n");
  EXPECT_THROW(load_sweep_config(run), ConfigError);
}

// ---- SVG plots --------------------------------------------------------------------------------

TEST(SvgPlots, ParseAsXmlAndDrawEveryDatum) {
  if (!have_xmllint()) GTEST_SKIP() << "xmllint not installed (tools/setup.sh installs libxml2-utils)";
  test::TempDir dir;
  svg::Series a{"a <&> \"b\"", {1, 2, 3, 4}, {0.5, 0.4, 0.35, 0.3}, {0.4, 0.3, 0.3, 0.2}, {0.6, 0.5, 0.4, 0.4}, false, true, false};
  svg::Series b{"paper", {1, 2, std::nan(""), 4}, {0.2, 0.3, 0.1, 0.5}, {}, {}, true, true, true};
  svg::Series curve{"curve", {1, 2, 3}, {1, 2, 3}, {}, {}, true, false, false};
  const std::string xy = svg::xy_plot({"T < 1 & \"x\"", "x", "y", false}, {a, b, curve});
  std::vector<svg::Bar> bars = {{"one", 10, 5.0, 15.0, 3.0}, {"two", std::nan(""), {}, {}, 20.0}, {"three", -4, -6.0, -1.0, {}}};
  const std::string bar = svg::bar_plot({"bars", "", "%", false}, bars, "paper");
  const std::string heat = svg::heatmap({"load", "expert", "", false}, {"l0", "l1", "l2"}, {"0", "1", "2", "3"},
                                        {{0.1, 0.2, 0.3, 0.4}, {0.25, 0.25, 0.25, 0.25}, {1, 0, 0, 0}});
  std::string why;
  for (const auto& [name, text] : {std::pair<std::string, std::string>{"xy.svg", xy}, {"bar.svg", bar}, {"heat.svg", heat}}) {
    write(dir, name, text);
    EXPECT_TRUE(parses_as_xml(dir.file(name), &why)) << name << ": " << why;
  }
  EXPECT_EQ(count(xy, "class=\"point\""), 7u);     // 4 + 3 finite points; the curve has no markers
  EXPECT_EQ(count(xy, "class=\"interval\""), 4u);
  EXPECT_EQ(count(xy, "<polyline"), 2u);           // series b and the curve are lines
  EXPECT_EQ(count(bar, "class=\"bar\""), 2u);      // "two" is undefined: no bar, a label
  EXPECT_EQ(count(bar, "undefined"), 1u);
  EXPECT_EQ(count(bar, "class=\"reference\""), 2u);
  EXPECT_EQ(count(heat, "class=\"cell\""), 12u);
  EXPECT_EQ(svg::escape("<a href='x'>&\x01"), "&lt;a href=&#39;x&#39;&gt;&amp;");
}

// ---- a tiny sweep, end to end -------------------------------------------------------------------

TEST(E2eSweep, SharedStagesReportsPlotsAndReportRegeneration) {
  test::TempDir dir;
  const std::string out = dir.file("sweep");
  // Two variants read the teacher's soft targets from one file per teacher; the third runs it.
  std::string base = tiny_sweep(out, R"(  variants:
    - {name: fresh, paper_percent: 29, set: [distillation.teacher_cache_disk=true]}
    - {name: concat, set: [student.init=concat_top_k, student.top_k=2, distillation.soft_loss=jsd, distillation.teacher_cache_disk=true]}
    - {name: hidden, set: [distillation.hidden_weight=0.5, distillation.hidden_loss=cosine]}
    - {name: merge, set: [student.init=merge_aligned, distillation.soft_loss=reverse_kl]}
)");
  const std::string batches = "  eval_batches: 4";
  base.replace(base.find(batches), batches.size(), batches + "\n  static_examples: true");
  const auto path = write(dir, "s.yaml", base);
  std::string o, e;
  ASSERT_EQ(run_distill("sweep " + path, &o, &e), 0) << e;
  // Two seeds: two teachers (shared by every variant), two baselines per student shape (fresh,
  // hidden and merge share theirs; concat's student is twice as wide), and the students.
  size_t teachers = 0, baselines = 0;
  for (const auto& d : fs::directory_iterator(out + "/stages")) {
    const std::string n = d.path().filename().string();
    teachers += n.rfind("teacher-", 0) == 0;
    baselines += n.rfind("baseline-", 0) == 0;
  }
  EXPECT_EQ(teachers, 2u);
  EXPECT_EQ(baselines, 4u);
  // The soft targets: computed once per teacher, read by both variants' students.
  size_t target_files = 0;
  for (const auto& f : fs::recursive_directory_iterator(out + "/stages"))
    target_files += f.path().extension() == ".bin" && f.path().filename().string().rfind("soft-targets-", 0) == 0;
  EXPECT_EQ(target_files, 2u);
  EXPECT_EQ(count(e, "computing the teacher's top-"), 2u) << e;
  EXPECT_EQ(count(e, "the teacher's soft targets come from"), 4u) << e;
  const auto s = json::parse(read_text_file(out + "/sweep.json"));
  ASSERT_EQ(s["rows"].size(), 4u);
  const auto& rows = s["rows"];
  EXPECT_EQ(rows[0]["teacher"], rows[1]["teacher"]);  // one teacher, evaluated once
  EXPECT_EQ(rows[0]["baseline"], rows[2]["baseline"]);
  EXPECT_NE(rows[0]["baseline"], rows[1]["baseline"]);
  EXPECT_GT(rows[0]["compression_percent"].get<double>(), rows[1]["compression_percent"].get<double>());
  for (const auto& r : rows) {
    EXPECT_TRUE(r["budget"]["fair"].get<bool>()) << r["name"];
    EXPECT_EQ(r["seeds"], 2);
    EXPECT_TRUE(fs::exists(out + "/" + r["name"].get<std::string>() + "/report.html")) << r["name"];
  }
  const std::string md = read_text_file(out + "/sweep.md");
  EXPECT_NE(md.find("![Compression against quality gain preserved"), std::string::npos) << md;
  const std::string precision = native_bf16_products() ? "bf16 products" : "float32";  // the bf16 keys' default, auto
  EXPECT_EQ(rows[0]["precision"]["training"], precision);
  EXPECT_EQ(rows[0]["precision"]["teacher_training"], precision);
  EXPECT_NE(md.find("Precision: training " + precision + " (the teacher's: " + precision + "), frozen teacher " + precision + "."),
            std::string::npos) << md;
  const std::string html = read_text_file(out + "/report.html");
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("http://"), html.find("http://www.w3.org/2000/svg"));  // nothing fetched
  EXPECT_EQ(count(html, "<svg"), 6u);
  // The frontier: one point per variant with a defined gain, plus the paper's five.
  const std::string frontier = read_text_file(out + "/frontier.svg");
  size_t defined = 0;
  for (const auto& r : rows) defined += r["gain_preserved_percent"].is_number();
  EXPECT_EQ(count(frontier, "class=\"point\""), defined + paper_table7().size());
  EXPECT_EQ(count(read_text_file(out + "/frontier-nats.svg"), "class=\"point\""), 2 * rows.size());  // teacher and student per row
  if (have_xmllint()) {
    std::string why;
    for (const char* f : {"gain.svg", "frontier.svg", "frontier-nats.svg", "curves.svg", "heldout.svg", "routing.svg"})
      EXPECT_TRUE(parses_as_xml(out + "/" + f, &why)) << f << ": " << why;
  }
  // The curves: teacher, baseline and four students, each a line.
  EXPECT_EQ(count(read_text_file(out + "/curves.svg"), "<polyline"), 6u);

  // distill report writes the same files again from what the sweep left.
  for (const char* f : {"report.html", "gain.svg", "sweep.md"}) fs::remove(out + "/" + f);
  ASSERT_EQ(run_distill("report " + out, &o, &e), 0) << e;
  EXPECT_EQ(read_text_file(out + "/report.html"), html);
  EXPECT_EQ(read_text_file(out + "/sweep.md"), md);
  ASSERT_EQ(run_distill("report " + out + "/concat", &o, &e), 0) << e;
  EXPECT_NE(read_text_file(out + "/concat/report.md").find("](curves.svg)"), std::string::npos);
  // A re-run trains nothing.
  ASSERT_EQ(run_distill("sweep " + path, &o, &e), 0) << e;
  EXPECT_EQ(e.find("training a"), std::string::npos) << e;

  // The shipped sweeps validate, through either command.
  ASSERT_EQ(run_distill("config check configs/table6.yaml", &o, &e), 0) << e;
  EXPECT_NE(o.find("# a sweep of 5 variant(s):"), std::string::npos) << o;
  ASSERT_EQ(run_distill("sweep configs/frontier.yaml --check", &o, &e), 0) << e;
  EXPECT_NE(o.find("e32_half: runs/frontier/e32_half teacher.model.num_experts=32 student.d_ff=128"), std::string::npos) << o;

  // A directory with no report is one clear error.
  EXPECT_EQ(run_distill("report " + dir.file("nothing"), &o, &e), 1);
  EXPECT_NE(e.find("nothing: no such directory"), std::string::npos) << e;
  fs::create_directories(dir.file("empty"));
  EXPECT_EQ(run_distill("report " + dir.file("empty"), &o, &e), 1);
  EXPECT_NE(e.find("holds neither sweep.json nor report.json"), std::string::npos) << e;

  // report.html in headless Chromium: it renders, and not as a blank page.
  if (std::system("command -v chromium > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "chromium not installed (tools/setup.sh installs it): report.html not rendered";
  }
  const auto shot = [&](const std::string& page, const std::string& png) {
    const std::string cmd = "cd '" + dir.path() + "' && timeout 120 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars "
                            "--window-size=1000,2400 --screenshot='" + png + "' 'file://" + page + "' > /dev/null 2>&1";
    return std::system(cmd.c_str()) == 0 && fs::exists(png) ? fs::file_size(png) : 0;
  };
  write(dir, "blank.html", "<!DOCTYPE html><html><body></body></html>");
  const auto blank = shot(dir.file("blank.html"), dir.file("blank.png"));
  const auto report = shot(out + "/report.html", dir.file("report.png"));
  ASSERT_GT(blank, 0u) << "chromium could not take a screenshot of a blank page";
  EXPECT_GT(report, 10 * blank) << "report.html rendered as " << report << " bytes of PNG, a blank page as " << blank;
}

}  // namespace
}  // namespace distill
