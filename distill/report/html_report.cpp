#include "distill/report/html_report.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <sstream>

#include "distill/report/report.h"
#include "distill/report/svg_plots.h"
#include "distill/report/sweep_report.h"
#include "models/errors.h"
#include "models/io/atomic_file.h"

namespace distill {
namespace fs = std::filesystem;
using json = nlohmann::json;

const std::vector<std::pair<double, double>>& paper_table7() {
  static const std::vector<std::pair<double, double>> points = {{82, 37}, {90, 32}, {95, 30}, {97, 27}, {99, 28}};
  return points;
}

namespace {

double number(const json& j, double fallback = std::nan("")) { return j.is_number() ? j.get<double>() : fallback; }

// A stage's training curve: ground-truth CE of the training log and held-out NLL, against the
// tokens of the stage (shifted by `offset`: a student continues its teacher's path).
struct Curve {
  std::vector<double> tokens, ce, eval_tokens, eval_nll;
};

Curve read_curve(const std::string& model_dir, const json& budget, double offset) {
  Curve c;
  const fs::path metrics = fs::path(model_dir).parent_path() / "metrics.jsonl";
  if (!fs::exists(metrics)) return c;
  // Lines written before metrics carried tokens: the stage's mean tokens per step.
  const double per_step = number(budget["tokens"], 0) / std::max(1.0, number(budget["steps"], 1));
  std::istringstream in(read_text_file(metrics.string()));
  for (std::string line; std::getline(in, line);) {
    json m = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!m.is_object() || !m.contains("step")) continue;
    const double tokens = offset + (m.contains("tokens") ? number(m["tokens"]) : number(m["step"]) * per_step);
    if (m.contains("eval")) {
      c.eval_tokens.push_back(tokens);
      c.eval_nll.push_back(number(m["eval"]["nll"]));
    } else if (m.contains("hard")) {
      c.tokens.push_back(tokens);
      c.ce.push_back(number(m["hard"]));
    }
  }
  return c;
}

// The final held-out NLL of a stage (its report entry), as the last point of its eval curve.
void add_final_eval(Curve& c, double tokens, double nll) {
  if (!std::isfinite(nll)) return;
  if (!c.eval_tokens.empty() && std::abs(c.eval_tokens.back() - tokens) < 1) return;
  c.eval_tokens.push_back(tokens);
  c.eval_nll.push_back(nll);
}

struct StageCurve {
  std::string name;
  Curve curve;
};

// Seed 1's teacher, baseline and student of a run report, on the tokens of each model's whole
// path: the student's curve starts where its teacher's training ended.
std::vector<StageCurve> run_curves(const json& r, const std::string& student_name = "student", bool with_teacher = true) {
  std::vector<StageCurve> out;
  if (!r.contains("runs") || r["runs"].empty()) return out;
  const auto& run = r["runs"][0];
  const double teacher_tokens = run["teacher"]["budget"].value("trained_here", true) ? number(run["teacher"]["budget"]["tokens"], 0) : 0;
  const auto final_nll = [&](const char* who) {
    const auto& evals = r[who]["evals"];
    return evals.is_array() && !evals.empty() ? number(evals[0]["nll"]) : std::nan("");
  };
  for (const char* who : {"teacher", "baseline", "student"}) {
    const bool student = std::string(who) == "student";
    if (!student && !with_teacher) continue;
    const double offset = student ? teacher_tokens : 0;
    Curve c = read_curve(run[who]["dir"].get<std::string>(), run[who]["budget"], offset);
    add_final_eval(c, offset + number(run[who]["budget"]["tokens"], 0), final_nll(who));
    out.push_back({student ? student_name : who, c});
  }
  return out;
}

std::vector<Figure> curve_figures(const std::vector<StageCurve>& curves, const std::string& what) {
  std::vector<svg::Series> train, held;
  for (const auto& s : curves) {
    train.push_back({s.name, s.curve.tokens, s.curve.ce, {}, {}, true, false, false});
    held.push_back({s.name, s.curve.eval_tokens, s.curve.eval_nll, {}, {}, true, true, false});
  }
  return {{"curves.svg", "Training cross-entropy against the ground truth, " + what,
           svg::xy_plot({"Training CE (ground truth)", "tokens trained on (a student: its teacher's, then its own)",
                         "cross-entropy (nats / token)", false},
                        train)},
          {"heldout.svg", "Held-out NLL at each evaluation, " + what,
           svg::xy_plot({"Held-out NLL", "tokens trained on (a student: its teacher's, then its own)", "NLL (nats / token)", false},
                        held)}};
}

Figure routing_figure(const json& routing, const std::string& title) {
  std::vector<std::string> rows, columns;
  std::vector<std::vector<double>> values;
  size_t E = 0;
  for (const auto& layer : routing) {
    rows.push_back(layer.value("layer", "?"));
    std::vector<double> v;
    for (const auto& x : layer["load"]) v.push_back(number(x));
    E = std::max(E, v.size());
    values.push_back(v);
  }
  for (size_t e = 0; e < E; ++e) columns.push_back(std::to_string(e));
  return {"routing.svg", "Share of each sparse layer's tokens routed to each expert (uniform = 1/E)",
          svg::heatmap({title, "expert", "", false}, rows, columns, values)};
}

std::string html_table(const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows) {
  std::string s = "<table><tr>";
  for (const auto& h : head) s += "<th>" + svg::escape(h) + "</th>";
  s += "</tr>\n";
  for (const auto& r : rows) {
    s += "<tr>";
    for (const auto& c : r) s += "<td>" + svg::escape(c) + "</td>";
    s += "</tr>\n";
  }
  return s + "</table>\n";
}

std::string page(const std::string& title, const std::string& summary, const std::vector<Figure>& figures) {
  std::string s = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + svg::escape(title) +
                  "</title>\n<style>body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
                  "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
                  "th{background:#f4f4f4}figure{margin:2em 0}figcaption{color:#555}</style></head>\n<body>\n<h1>" +
                  svg::escape(title) + "</h1>\n" + summary;
  for (const auto& f : figures) s += "<figure>\n" + f.svg + "<figcaption>" + svg::escape(f.caption) + "</figcaption></figure>\n";
  return s + "</body></html>\n";
}

// A point at (x, y) with its 95% interval `ci` ([lo, hi], or null: none).
void add_point(svg::Series& s, double x, double y, const json& ci) {
  s.x.push_back(x);
  s.y.push_back(y);
  s.lo.push_back(ci.is_array() ? number(ci[0]) : std::nan(""));
  s.hi.push_back(ci.is_array() ? number(ci[1]) : std::nan(""));
}

json read_json_file(const std::string& path) {
  json j = json::parse(read_text_file(path), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) throw InputError(path + ": not a JSON object (was it written by distill?)");
  return j;
}

}  // namespace

std::vector<Figure> run_figures(const json& r) {
  auto figures = curve_figures(run_curves(r), "seed 1");
  if (r.contains("routing") && r["routing"].is_array() && !r["routing"].empty()) {
    figures.push_back(routing_figure(r["routing"], "Teacher's expert load (held-out data)"));
  }
  return figures;
}

std::vector<Figure> sweep_figures(const json& s) {
  std::vector<Figure> figures;
  std::vector<svg::Bar> bars;
  svg::Series measured{"measured (95% interval over seeds)", {}, {}, {}, {}, false, true, false};
  svg::Series paper{"paper, Table 7", {}, {}, {}, {}, false, true, true};
  for (const auto& [c, g] : paper_table7()) {
    paper.x.push_back(c);
    paper.y.push_back(g);
  }
  // The same frontier in nats over each point's own fair baseline: defined even where the ratio is not.
  svg::Series teacher_lift{"teacher - baseline", {}, {}, {}, {}, false, true, true};
  svg::Series student_lift{"student - baseline", {}, {}, {}, {}, false, true, false};
  std::vector<StageCurve> curves;
  json first_report;
  for (const auto& row : s["rows"]) {
    const double x = number(row["compression_percent"]);
    add_point(teacher_lift, x, number(row["gap"]["mean"]), row["gap"]["ci95"]);
    add_point(student_lift, x, number(row["student_minus_baseline"]["mean"]), row["student_minus_baseline"]["ci95"]);
    add_point(measured, x, number(row["gain_preserved_percent"]), row["gain_preserved_ci95"]);
    svg::Bar b{row["label"].get<std::string>(), measured.y.back(), {}, {}, {}};
    if (row["gain_preserved_ci95"].is_array()) {
      b.lo = measured.lo.back();
      b.hi = measured.hi.back();
    }
    if (row["paper_percent"].is_number()) b.reference = number(row["paper_percent"]);
    bars.push_back(b);
    const std::string report_path = (fs::path(row["dir"].get<std::string>()) / "report.json").string();
    if (!fs::exists(report_path)) continue;
    const json r = read_json_file(report_path);
    if (first_report.is_null()) first_report = r;
    auto c = run_curves(r, row["label"].get<std::string>(), curves.empty());
    curves.insert(curves.end(), c.begin(), c.end());
  }
  figures.push_back({"gain.svg", "Quality gain preserved per variant, mean over seeds with its 95% interval; marks: the paper's value",
                     svg::bar_plot({"Quality gain preserved", "", "% of the teacher's gain over the dense baseline", false}, bars,
                                   "the paper's value")});
  figures.push_back({"frontier.svg", "Compression against quality gain preserved; hollow: the paper's Table 7 (T5-Base scale)",
                     svg::xy_plot({"Compression frontier", "compression (% of the teacher's parameters removed)",
                                   "quality gain preserved (%)", false},
                                  {measured, paper})});
  figures.push_back({"frontier-nats.svg",
                     "Compression against held-out negative log perplexity over each point's fair dense baseline (nats, 95% "
                     "intervals): above 0 beats the baseline; the student's share of the teacher's height is the gain preserved",
                     svg::xy_plot({"Compression frontier in nats", "compression (% of the teacher's parameters removed)",
                                   "neg. log perplexity - baseline's (nats)", false},
                                  {teacher_lift, student_lift})});
  auto c = curve_figures(curves, "seed 1 of every variant (teacher and baseline of the first)");
  figures.insert(figures.end(), c.begin(), c.end());
  if (first_report.contains("routing") && first_report["routing"].is_array() && !first_report["routing"].empty()) {
    figures.push_back(routing_figure(first_report["routing"], "Teacher's expert load (first variant, held-out data)"));
  }
  return figures;
}

std::string write_html_report(const std::string& dir) {
  const fs::path sweep_path = fs::path(dir) / "sweep.json", report_path = fs::path(dir) / "report.json";
  std::vector<Figure> figures;
  std::string title, summary;
  if (fs::exists(sweep_path)) {
    const json s = read_json_file(sweep_path.string());
    figures = sweep_figures(s);
    title = "distill sweep: " + s.value("config", dir);
    std::vector<std::vector<std::string>> rows;
    for (const auto& r : s["rows"]) {
      rows.push_back({r["label"].get<std::string>(), fmt::format("{:.1f}%", number(r["compression_percent"])),
                      gain_preserved_text(r["gain_preserved_percent"], r["gain_preserved_ci95"]),
                      r["paper_percent"].is_number() ? fmt::format("{:.0f}%", number(r["paper_percent"])) : "",
                      fmt::format("{:.4f}", number(r["student"])), fmt::format("{:.4f}", number(r["baseline"])),
                      fmt::format("{:.4f}", number(r["teacher"])), r["seeds"].dump()});
    }
    summary = "<p>Gain preserved = (student - baseline) / (teacher - baseline) on held-out negative log perplexity; each "
              "row's dense baseline has the student's shape and its whole budget.</p>\n" +
              html_table({"variant", "compression", "gain preserved (95% interval)", "paper", "student", "baseline", "teacher", "seeds"},
                         rows);
  } else if (fs::exists(report_path)) {
    const json r = read_json_file(report_path.string());
    figures = run_figures(r);
    title = "distill report";
    const auto& q = r["quality"];
    summary = html_table({"", "compression", "gain preserved (95% interval)", "student", "baseline", "teacher", "seeds"},
                         {{"negative log perplexity", fmt::format("{:.1f}%", number(r["compression"]["percent"])),
                           gain_preserved_text(q["gain_preserved_percent"], q["gain_preserved_ci95"]), fmt::format("{:.4f}", number(q["student"])),
                           fmt::format("{:.4f}", number(q["baseline"])), fmt::format("{:.4f}", number(q["teacher"])), r["seeds"].dump()}});
    if (q.contains("gain_preserved_undefined")) summary += "<p>" + svg::escape(q["gain_preserved_undefined"].get<std::string>()) + "</p>\n";
  } else {
    throw InputError(dir + ": holds neither sweep.json nor report.json (is it the output_dir of a run or a sweep?)");
  }
  std::string md = "\n## Plots\n\nAlso in `report.html`, one self-contained page.\n\n";
  for (const auto& f : figures) {
    write_text_atomic((fs::path(dir) / f.file).string(), f.svg);
    md += "![" + f.caption + "](" + f.file + ")\n\n";
  }
  write_text_atomic((fs::path(dir) / "report.html").string(), page(title, summary, figures));
  return md;
}

void regenerate_report(const std::string& dir) {
  if (!fs::is_directory(dir)) throw InputError(dir + ": no such directory");
  const std::string plots = write_html_report(dir);
  if (fs::exists(fs::path(dir) / "sweep.json")) {
    const json s = read_json_file((fs::path(dir) / "sweep.json").string());
    write_text_atomic((fs::path(dir) / "sweep.md").string(), sweep_markdown(s) + plots);
  } else {
    const json r = read_json_file((fs::path(dir) / "report.json").string());
    write_text_atomic((fs::path(dir) / "report.md").string(), report_markdown(r) + plots);
  }
}

}  // namespace distill
