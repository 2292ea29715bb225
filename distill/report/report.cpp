#include "distill/report/report.h"

#include "distill/evaluation/gain.h"

#include <fmt/format.h>

#include <cmath>
#include <functional>

#include "distill/evaluation/stats.h"
#include "models/arch/model_stats.h"

namespace distill {
using nlohmann::json;

namespace {

using EvalOf = std::function<const EvalResult&(const SeedRun&)>;

const EvalResult& teacher_of(const SeedRun& r) { return r.teacher_eval; }
const EvalResult& baseline_of(const SeedRun& r) { return r.baseline_eval; }
const EvalResult& student_of(const SeedRun& r) { return r.student_eval; }

double sample_dof(const std::vector<SeedRun>& runs) {
  return static_cast<double>(std::max<size_t>(2, runs[0].teacher_eval.batch_nll.value.size()) - 1);
}

// Mean over seeds of sum_m w_m * (model m's negative log perplexity) with both sources of error.
stats::Estimate nlp_estimate(const std::vector<SeedRun>& runs, const std::vector<std::pair<EvalOf, double>>& terms) {
  std::vector<double> values;
  for (const auto& run : runs) {
    double v = 0;
    for (const auto& [of, w] : terms) v += w * of(run).neg_log_perplexity;
    values.push_back(v);
  }
  // Negative log perplexity is -(NLL sum) / tokens: the weights change sign.
  std::vector<std::pair<EvalOf, double>> negated;
  for (const auto& [of, w] : terms) negated.emplace_back(of, -w);
  const auto sums = seed_mean(runs, negated, &EvalResult::batch_nll);
  return stats::estimate(values, stats::ratio_se(sums), sample_dof(runs));
}

stats::Estimate accuracy_estimate(const std::vector<SeedRun>& runs, const EvalOf& of) {
  std::vector<double> values;
  for (const auto& run : runs) values.push_back(of(run).accuracy);
  const auto sums = seed_mean(runs, {{of, 1.0}}, &EvalResult::batch_correct);
  return stats::estimate(values, stats::ratio_se(sums), sample_dof(runs));
}

// Per model: each seed's evaluation ("evals") and its quality over seeds ("quality").
void add_evals_and_quality(json& r, const std::vector<SeedRun>& runs,
                           const std::vector<std::pair<const char*, EvalOf>>& roles) {
  for (const auto& [who, of] : roles) {
    json evals = json::array();
    for (const auto& run : runs) evals.push_back(of(run).to_json());
    r[who]["evals"] = evals;
    const auto nlp = nlp_estimate(runs, {{of, 1.0}});
    r[who]["quality"] = {{"neg_log_perplexity", estimate_json(nlp)},
                         {"perplexity", std::exp(-nlp.mean)},
                         {"accuracy", estimate_json(accuracy_estimate(runs, of))}};
  }
}

// A sparse teacher's routing per layer ("routing") and a warning for each unhealthy layer.
void add_teacher_routing(json& r, json& warnings, const EvalResult& teacher_eval) {
  if (teacher_eval.routing.empty()) return;
  json layers = json::array();
  for (const auto& l : teacher_eval.routing) layers.push_back(l.to_json());
  r["routing"] = layers;
  for (const auto& w : routing_warnings(teacher_eval.routing, "teacher")) warnings.push_back(w);
}

json model_json(const ModelConfig& c, int64_t S, int64_t T) {
  const auto p = count_parameters(c);
  return {{"model_type", c.model_type},
          {"parameters",
           {{"total", p.total}, {"embedding", p.embedding}, {"non_embedding", p.non_embedding},
            {"expert", p.expert}, {"active_per_token", p.active_per_token}}},
          {"flops_per_token", forward_flops(c, S, T) / static_cast<double>(S + T)}};
}

json budget_json(const StageResult& s) {
  json j = s.budget.to_json();
  j["known"] = s.budget_known;
  j["trained_here"] = s.trained_here;
  return j;
}

// The teacher's routing per sparse layer as a Markdown table.
std::string routing_markdown(const json& layers) {
  std::string md = "| layer | dropped at eval capacity | at training capacity | max load | min load | dead experts | mean gate | balance loss |\n";
  md += "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  for (const auto& l : layers) {
    md += fmt::format("| {} | {:.2f}% | {} | {:.2f}% | {:.2f}% | {} | {:.3f} | {:.3f} |\n", l["layer"].get<std::string>(),
                      100 * l["dropped_rate"].get<double>(),
                      l.contains("dropped_rate_train_capacity") ? fmt::format("{:.2f}%", 100 * l["dropped_rate_train_capacity"].get<double>()) : "",
                      100 * l["max_load"].get<double>(), 100 * l["min_load"].get<double>(), l["dead_experts"].get<int64_t>(),
                      l["mean_gate"].get<double>(), l["aux_loss"].get<double>());
  }
  return md;
}

// "mean (lo to hi)" with `decimals` places, signed when `sign`.
std::string interval_text(const json& e, int decimals, bool sign) {
  auto f = [&](double x) { return sign ? fmt::format("{:+.{}f}", x, decimals) : fmt::format("{:.{}f}", x, decimals); };
  std::string s = f(e["mean"].get<double>());
  if (!e["ci95"].is_null()) s += " (" + f(e["ci95"][0].get<double>()) + " to " + f(e["ci95"][1].get<double>()) + ")";
  return s;
}

std::string si(double x) {
  const char* units[] = {"", "K", "M", "G", "T", "P", "E"};
  int u = 0;
  while (std::abs(x) >= 1000 && u < 6) {
    x /= 1000;
    ++u;
  }
  return fmt::format("{:.3g}{}", x, units[u]);
}

std::string duration(double s) {
  const auto t = static_cast<int64_t>(std::llround(s));
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t % 3600) / 60);
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

}  // namespace

json build_report(const ReportInputs& in) {
  const auto& runs = in.runs;
  const auto& c = in.config;
  const int64_t S = in.src_len, T = in.tgt_len;
  const size_t N = runs.size();
  const SeedRun& first = runs.front();
  json r;
  r["seeds"] = N;
  r["teacher"] = model_json(in.teacher, S, T);
  r["baseline"] = model_json(in.baseline, S, T);
  r["student"] = model_json(in.student, S, T);
  add_evals_and_quality(r, runs, {{"teacher", teacher_of}, {"baseline", baseline_of}, {"student", student_of}});
  r["teacher"]["budget"] = budget_json(first.teacher);
  r["baseline"]["budget"] = budget_json(first.baseline);
  r["student"]["budget"] = budget_json(first.student);
  const Budget path = first.teacher.budget + first.student.budget;
  r["student"]["path_budget"] = path.to_json();
  r["student"]["path_budget"]["known"] = first.teacher.budget_known;
  json per_seed = json::array();
  for (const auto& run : runs) {
    per_seed.push_back({{"seed", run.seed},
                        {"teacher", {{"dir", run.teacher.model_dir}, {"budget", budget_json(run.teacher)}}},
                        {"baseline", {{"dir", run.baseline.model_dir}, {"budget", budget_json(run.baseline)}}},
                        {"student", {{"dir", run.student.model_dir}, {"budget", budget_json(run.student)}}}});
  }
  r["runs"] = per_seed;

  const double tp = static_cast<double>(count_parameters(in.teacher).total);
  const double sp = static_cast<double>(count_parameters(in.student).total);
  r["compression"] = {{"percent", 100.0 * (1.0 - sp / tp)}, {"ratio", tp / sp},
                      {"flops_per_token_ratio", forward_flops(in.teacher, S, T) / forward_flops(in.student, S, T)}};

  // Quality: means over seeds; the gap and the student's lift with paired errors (the same seeds'
  // runs and the same held-out batches).
  json warnings = json::array();
  const auto t = nlp_estimate(runs, {{teacher_of, 1.0}}), b = nlp_estimate(runs, {{baseline_of, 1.0}}),
             s = nlp_estimate(runs, {{student_of, 1.0}});
  const auto gap = nlp_estimate(runs, {{teacher_of, 1.0}, {baseline_of, -1.0}});
  const auto lift = nlp_estimate(runs, {{student_of, 1.0}, {baseline_of, -1.0}});
  double mean_nll_t = 0, mean_nll_s = 0, mean_acc_t = 0, mean_acc_s = 0;
  for (const auto& run : runs) {
    mean_nll_t += run.teacher_eval.nll / static_cast<double>(N);
    mean_nll_s += run.student_eval.nll / static_cast<double>(N);
    mean_acc_t += run.teacher_eval.accuracy / static_cast<double>(N);
    mean_acc_s += run.student_eval.accuracy / static_cast<double>(N);
  }
  const auto gap_sums = seed_mean(runs, {{teacher_of, -1.0}, {baseline_of, 1.0}}, &EvalResult::batch_nll);
  json quality = {{"metric", "negative log perplexity (higher is better)"},
                  {"teacher", t.mean}, {"baseline", b.mean}, {"student", s.mean},
                  {"teacher_minus_baseline", gap.mean},
                  {"gap", estimate_json(gap)},
                  {"student_minus_baseline", estimate_json(lift)},
                  // The held-out sample's noise alone on the gap (paired over batches), 2 standard errors.
                  {"gap_noise_2se", 2.0 * stats::ratio_se(gap_sums)},
                  // Plain retention on the positive NLL: below 100% when the student is worse.
                  {"retention_percent", 100.0 * mean_nll_t / mean_nll_s},
                  {"accuracy_retention_percent", 100.0 * mean_acc_s / mean_acc_t}};
  GainInputs gi;
  for (const auto& run : runs) {
    gi.gaps.push_back(run.teacher_eval.neg_log_perplexity - run.baseline_eval.neg_log_perplexity);
    gi.lifts.push_back(run.student_eval.neg_log_perplexity - run.baseline_eval.neg_log_perplexity);
  }
  gi.gap_sums = gap_sums;
  gi.lift_sums = seed_mean(runs, {{student_of, -1.0}, {baseline_of, 1.0}}, &EvalResult::batch_nll);
  gi.sample_dof = sample_dof(runs);
  const Gain gain = gain_preserved(gi);
  quality["gain_preserved_per_seed"] = gain.per_seed;
  if (gain.percent) {
    quality["gain_preserved_percent"] = *gain.percent;
    quality["gain_preserved_ci95"] = {gain.ci95->lo, gain.ci95->hi};
  } else {
    quality["gain_preserved_percent"] = nullptr;
    quality["gain_preserved_ci95"] = nullptr;
    quality["gain_preserved_undefined"] = gain.undefined;
    warnings.push_back("quality gain preserved is undefined: " + gain.undefined);
  }
  r["quality"] = quality;

  // Budgets: the baseline must have trained on at least the tokens of the student's whole path.
  const bool known = first.teacher.budget_known && first.baseline.budget_known;
  json check = {{"rule", "the dense baseline trains on at least the tokens of the student's whole path: its teacher's "
                         "training plus its distillation"},
                {"baseline_tokens", first.baseline.budget_known ? json(first.baseline.budget.tokens) : json(nullptr)},
                {"student_path_tokens", first.teacher.budget_known ? json(path.tokens) : json(nullptr)}};
  check["fair"] = known ? json(first.baseline.budget.tokens >= path.tokens) : json(nullptr);
  r["budget_check"] = check;
  if (!first.teacher.budget_known) {
    warnings.push_back("the teacher's training budget is unknown (teacher.path without teacher.trained_tokens): the baseline "
                       "cannot be checked against the student's whole budget, and gain preserved is likely overstated");
  }
  if (!first.baseline.budget_known) {
    warnings.push_back("the baseline's training budget is unknown (baseline.path without baseline.trained_tokens): it "
                       "cannot be checked against the student's whole budget");
  }
  if (known && first.baseline.budget.tokens < path.tokens) {
    warnings.push_back(fmt::format(
        "the dense baseline trained on {} tokens, fewer than the student's whole path ({}: teacher {} + distillation {}): "
        "gain preserved is overstated; leave baseline.steps unset to give it the student's budget",
        first.baseline.budget.tokens, path.tokens, first.teacher.budget.tokens, first.student.budget.tokens));
  }
  if (count_parameters(in.baseline).total != count_parameters(in.student).total) {
    warnings.push_back(fmt::format("the baseline ({} parameters) does not have the student's shape ({} parameters)",
                                   count_parameters(in.baseline).total, count_parameters(in.student).total));
  }
  if (N == 1) {
    warnings.push_back("one seed: the intervals cover the held-out sample's noise only, not the spread between training "
                       "runs, which is often larger; set seeds: 3 or more to measure it");
  }
  add_teacher_routing(r, warnings, first.teacher_eval);
  if (!in.task_runs.empty()) {
    r["task"] = build_task_report(in.task_runs, in.task_options);
    for (const auto& [metric, g] : r["task"]["gain"].items()) {
      if (g["gain_preserved_percent"].is_null()) {
        warnings.push_back("task gain preserved on " + metric + " is undefined: " + g["gain_preserved_undefined"].get<std::string>());
      }
    }
  }
  r["warnings"] = warnings;

  r["settings"] = {{"hard_weight", c.distillation.hard_weight}, {"soft_weight", c.distillation.soft_weight},
                   {"temperature", c.distillation.temperature}, {"soft_loss", c.distillation.soft_loss},
                   {"student_init", c.student.init}, {"copy_non_expert", c.student.copy_non_expert},
                   {"steps", c.training.steps}, {"teacher_steps", first.teacher.trained_here ? json(first.teacher.budget.steps) : json(nullptr)},
                   {"baseline_steps", in.baseline_steps}, {"batch_size", c.data.batch_size},
                   {"objective", c.data.objective}, {"input_length", S}, {"target_length", T},
                   {"eval_tokens", first.student_eval.tokens}, {"eval_batches", first.student_eval.batch_nll.value.size()},
                   {"seed", c.seed}, {"seeds", N}, {"teacher_train_once", c.teacher.train_once}};
  if (c.distillation.teacher_capacity_factor) r["settings"]["teacher_capacity_factor"] = *c.distillation.teacher_capacity_factor;
  r["settings"]["precision"] = precision_record(c, first.teacher.trained_here);
  if (c.pretrain.steps > 0) {
    r["settings"]["pretrain"] = {{"steps", c.pretrain.steps}, {"objective", c.pretrain.data.objective},
                                 {"batch_size", c.pretrain.data.batch_size}, {"files", c.pretrain.data.train.files}};
  }
  return r;
}

const char* precision_name(bool bf16) { return bf16 ? "bf16 products" : "float32"; }

json precision_record(const RunConfig& c, bool teacher_trained_here) {
  json p = {{"training", precision_name(c.training.bf16)}, {"frozen_teacher", precision_name(c.teacher.bf16)}};
  if (teacher_trained_here) p["teacher_training"] = precision_name(c.teacher.train_bf16);
  return p;
}

std::string precision_text(const json& p) {
  std::string text = "training " + p["training"].get<std::string>();
  if (p.contains("teacher_training")) text += " (the teacher's: " + p["teacher_training"].get<std::string>() + ")";
  return text + ", frozen teacher " + p["frozen_teacher"].get<std::string>();
}

std::string report_markdown(const json& r) {
  const size_t N = r["seeds"].get<size_t>();
  const auto interval = interval_text;
  auto row = [&](const char* who) {
    const auto& m = r[who];
    const auto& q = m["quality"];
    return fmt::format("| {} | {} | {} | {} | {:.3g} | {} | {:.2f} | {} |\n", who, m["parameters"]["total"].get<int64_t>(),
                       m["parameters"]["non_embedding"].get<int64_t>(), m["parameters"]["active_per_token"].get<int64_t>(),
                       m["flops_per_token"].get<double>(), interval(q["neg_log_perplexity"], 4, false),
                       q["perplexity"].get<double>(),
                       fmt::format("{:.2f}%", 100.0 * q["accuracy"]["mean"].get<double>()));
  };
  std::string md = "# Distillation report\n\n";
  md += N > 1 ? fmt::format("Means over {} seeds; 95% intervals from the seeds' spread and the held-out sample's noise.\n\n", N)
              : "One seed; 95% intervals from the held-out sample's noise only.\n\n";
  md += "| model | parameters | non-embedding | active per token | FLOPs per token | neg. log perplexity (95% interval) | perplexity | token accuracy |\n";
  md += "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  md += row("teacher") + row("baseline") + row("student");

  md += "\n| training budget | steps | examples | tokens | training FLOPs | wall time |\n";
  md += "| --- | ---: | ---: | ---: | ---: | ---: |\n";
  auto budget_row = [&](const std::string& who, const json& b) {
    if (!b.value("known", true) && b.value("tokens", int64_t{0}) == 0) return fmt::format("| {} | unknown | | | | |\n", who);
    return fmt::format("| {} | {} | {} | {} | {} | {} |\n", who, b["steps"].get<int64_t>(), b["examples"].get<int64_t>(),
                       si(static_cast<double>(b["tokens"].get<int64_t>())), si(b["train_flops"].get<double>()),
                       duration(b["seconds"].get<double>()));
  };
  md += budget_row("teacher", r["teacher"]["budget"]);
  md += budget_row("baseline", r["baseline"]["budget"]);
  md += budget_row("student (distillation)", r["student"]["budget"]);
  md += budget_row("student's whole path (teacher + distillation)", r["student"]["path_budget"]);
  if (N > 1) md += fmt::format("\n(Budgets of the first seed; every seed trains on the same batches.)\n");
  if (r["settings"].contains("pretrain")) {
    const auto& p = r["settings"]["pretrain"];
    md += fmt::format("\nThe teacher's and the baseline's budgets include their pre-training: {} steps each of {} "
                      "(batch {}) before the task; the baseline then fine-tunes for the teacher's fine-tuning steps plus "
                      "the student's.\n",
                      p["steps"].get<int64_t>(), p["objective"].get<std::string>(), p["batch_size"].get<int64_t>());
  }

  const auto& q = r["quality"];
  md += fmt::format("\n- Compression: **{:.1f}%** fewer parameters ({:.2f}x smaller); {:.2f}x the FLOPs per token.\n",
                    r["compression"]["percent"].get<double>(), r["compression"]["ratio"].get<double>(),
                    r["compression"]["flops_per_token_ratio"].get<double>());
  md += "- Teacher - baseline gap, what the experts buy: " + interval(q["gap"], 4, true) + " nats.\n";
  if (q["gain_preserved_percent"].is_null()) {
    md += "- Quality gain preserved: **undefined**: " + q["gain_preserved_undefined"].get<std::string>() + ".\n";
  } else {
    md += fmt::format("- Quality gain preserved: **{:.1f}%** (95% interval {:.1f}% to {:.1f}%) = (student - baseline) / "
                      "(teacher - baseline) on negative log perplexity = ({:.4f} - {:.4f}) / ({:.4f} - {:.4f}).\n",
                      q["gain_preserved_percent"].get<double>(), q["gain_preserved_ci95"][0].get<double>(),
                      q["gain_preserved_ci95"][1].get<double>(), q["student"].get<double>(), q["baseline"].get<double>(),
                      q["teacher"].get<double>(), q["baseline"].get<double>());
  }
  if (N > 1) {
    std::string per;
    for (size_t i = 0; i < q["gain_preserved_per_seed"].size(); ++i) {
      const auto& g = q["gain_preserved_per_seed"][i];
      per += fmt::format("{}gap {:+.4f}, gain {}", per.empty() ? "" : "; ",
                         r["teacher"]["evals"][i]["neg_log_perplexity"].get<double>() -
                             r["baseline"]["evals"][i]["neg_log_perplexity"].get<double>(),
                         g.is_null() ? std::string("-") : fmt::format("{:.1f}%", g.get<double>()));
    }
    md += "- Seed by seed (\"-\": the teacher is no better than the baseline): " + per + ".\n";
  }
  md += fmt::format("- Plain retention: {:.1f}% of the teacher's per-token likelihood (teacher NLL / student NLL), {:.1f}% of "
                    "its token accuracy.\n",
                    q["retention_percent"].get<double>(), q["accuracy_retention_percent"].get<double>());
  md += fmt::format("- Held-out sample: {} target tokens in {} batches; its noise alone on the gap is {:.4f} nats (2 standard errors).\n",
                    r["settings"]["eval_tokens"].get<int64_t>(), r["settings"]["eval_batches"].get<int64_t>(),
                    q["gap_noise_2se"].get<double>());
  const auto& check = r["budget_check"];
  if (check["fair"].is_null()) {
    md += "- Budget check: not possible (a training budget is unknown).\n";
  } else {
    md += fmt::format("- Budget check: the baseline trained on {} tokens, the student's whole path on {}: {}.\n",
                      si(static_cast<double>(check["baseline_tokens"].get<int64_t>())),
                      si(static_cast<double>(check["student_path_tokens"].get<int64_t>())),
                      check["fair"].get<bool>() ? "fair" : "**the baseline had less**");
  }
  const auto& s = r["settings"];
  md += fmt::format("- Settings: {} hard + {} soft ({}, T = {}), student init `{}`{}, {} steps of batch {}, objective {}.\n",
                    s["hard_weight"].get<double>(), s["soft_weight"].get<double>(), s["soft_loss"].get<std::string>(),
                    s["temperature"].get<double>(), s["student_init"].get<std::string>(),
                    s["copy_non_expert"].get<bool>() ? " with non-expert weights copied" : "",
                    s["steps"].get<int64_t>(), s["batch_size"].get<int64_t>(), s["objective"].get<std::string>());
  if (s.contains("precision")) {  // absent from reports written before it was recorded
    md += "- Precision: " + precision_text(s["precision"]) + ".\n";
  }
  if (r.contains("routing")) {
    md += "\nTeacher routing per sparse layer (first seed, held-out batches; loads are shares of the layer's real tokens):\n\n";
    md += routing_markdown(r["routing"]);
  }
  if (r.contains("task")) md += task_markdown(r["task"]);
  if (!r["warnings"].empty()) md += "\n";
  for (const auto& w : r["warnings"]) md += "- **Warning:** " + w.get<std::string>() + "\n";
  return md;
}

std::string report_summary(const json& r) {
  const auto& q = r["quality"];
  auto line = [&](const char* who) {
    const auto& e = r[who]["quality"]["neg_log_perplexity"];
    std::string ci = e["ci95"].is_null() ? "" : fmt::format(" ({:.4f} to {:.4f})", e["ci95"][0].get<double>(), e["ci95"][1].get<double>());
    return fmt::format("{:<8} {:>10} params  neg-log-ppl {:.4f}{}\n", who, r[who]["parameters"]["total"].get<int64_t>(),
                       e["mean"].get<double>(), ci);
  };
  std::string s = line("teacher") + line("baseline") + line("student");
  s += fmt::format("compression {:.1f}% ({:.2f}x), quality gain preserved {}\n", r["compression"]["percent"].get<double>(),
                   r["compression"]["ratio"].get<double>(),
                   q["gain_preserved_percent"].is_null()
                       ? std::string("undefined")
                       : fmt::format("{:.1f}% ({:.1f}% to {:.1f}%)", q["gain_preserved_percent"].get<double>(),
                                     q["gain_preserved_ci95"][0].get<double>(), q["gain_preserved_ci95"][1].get<double>()));
  for (const auto& w : r["warnings"]) s += "warning: " + w.get<std::string>() + "\n";
  return s;
}

json build_comparison(const ComparisonInputs& in) {
  const auto& runs = in.runs;
  const int64_t S = in.src_len, T = in.tgt_len;
  const size_t N = runs.size();
  json r;
  r["seeds"] = N;
  r["steps"] = runs.front().teacher.budget.steps;
  r["teacher"] = model_json(in.teacher, S, T);
  r["dense"] = model_json(in.dense, S, T);
  add_evals_and_quality(r, runs, {{"teacher", teacher_of}, {"dense", baseline_of}});
  r["teacher"]["budget"] = budget_json(runs.front().teacher);
  r["dense"]["budget"] = budget_json(runs.front().baseline);
  r["flops_per_token_ratio"] = forward_flops(in.teacher, S, T) / forward_flops(in.dense, S, T);
  const auto gap = nlp_estimate(runs, {{teacher_of, 1.0}, {baseline_of, -1.0}});
  r["gap"] = estimate_json(gap);
  json per_seed = json::array();
  for (const auto& run : runs) per_seed.push_back(run.teacher_eval.neg_log_perplexity - run.baseline_eval.neg_log_perplexity);
  r["gap_per_seed"] = per_seed;
  std::string verdict = "no measurable difference: the gap's 95% interval includes zero";
  if (gap.se > 0 && gap.lo > 0) verdict = "the teacher beats its dense counterpart";
  if (gap.se > 0 && gap.hi < 0) verdict = "the dense counterpart beats the teacher";
  r["verdict"] = verdict;
  json warnings = json::array();
  if (N == 1) {
    warnings.push_back("one seed: the interval covers the held-out sample's noise only, not the spread between training "
                       "runs, which is often larger; set seeds: 3 or more to measure it");
  }
  add_teacher_routing(r, warnings, runs.front().teacher_eval);
  r["warnings"] = warnings;
  r["settings"] = {{"steps", runs.front().teacher.budget.steps}, {"batch_size", in.config.data.batch_size},
                   {"objective", in.config.data.objective}, {"seed", in.config.seed}, {"seeds", N},
                   {"eval_tokens", runs.front().teacher_eval.tokens},
                   {"precision", precision_name(in.config.teacher.train_bf16)}};  // both models trained so
  return r;
}

std::string comparison_markdown(const json& r) {
  const size_t N = r["seeds"].get<size_t>();
  std::string md = "# Switch teacher vs its dense counterpart at equal steps\n\n";
  md += fmt::format("{} seed{}, {} steps each on the same batches; 95% intervals from {}.\n\n", N, N > 1 ? "s" : "",
                    r["steps"].get<int64_t>(), N > 1 ? "the seeds' spread and the held-out sample's noise" : "the held-out sample's noise only");
  md += "| model | parameters | active per token | FLOPs per token | neg. log perplexity (95% interval) | per seed |\n";
  md += "| --- | ---: | ---: | ---: | ---: | --- |\n";
  for (const char* who : {"teacher", "dense"}) {
    const auto& m = r[who];
    std::string per;
    for (const auto& e : m["evals"]) per += (per.empty() ? "" : ", ") + fmt::format("{:.4f}", e["neg_log_perplexity"].get<double>());
    md += fmt::format("| {} | {} | {} | {:.3g} | {} | {} |\n", std::string(who) == "dense" ? "dense counterpart" : who,
                      m["parameters"]["total"].get<int64_t>(), m["parameters"]["active_per_token"].get<int64_t>(),
                      m["flops_per_token"].get<double>(), interval_text(m["quality"]["neg_log_perplexity"], 4, false), per);
  }
  md += fmt::format("\n- Gap (teacher - dense): **{}** nats: {}.\n", interval_text(r["gap"], 4, true), r["verdict"].get<std::string>());
  md += fmt::format("- FLOPs per token: the teacher's are {:.2f}x the dense counterpart's.\n", r["flops_per_token_ratio"].get<double>());
  if (r["settings"].contains("precision")) {  // absent from a compare.json written before it was recorded
    md += fmt::format("- Precision: both trained with {}.\n", r["settings"]["precision"].get<std::string>());
  }
  if (r.contains("routing")) {
    md += "\nTeacher routing per sparse layer (first seed, held-out batches):\n\n" + routing_markdown(r["routing"]);
  }
  if (!r["warnings"].empty()) md += "\n";
  for (const auto& w : r["warnings"]) md += "- **Warning:** " + w.get<std::string>() + "\n";
  return md;
}

std::string comparison_summary(const json& r) {
  std::string s;
  for (const char* who : {"teacher", "dense"}) {
    s += fmt::format("{:<8} {:>10} params  neg-log-ppl {}\n", who, r[who]["parameters"]["total"].get<int64_t>(),
                     interval_text(r[who]["quality"]["neg_log_perplexity"], 4, false));
  }
  s += "gap " + interval_text(r["gap"], 4, true) + ": " + r["verdict"].get<std::string>() + "\n";
  for (const auto& w : r["warnings"]) s += "warning: " + w.get<std::string>() + "\n";
  return s;
}

}  // namespace distill
