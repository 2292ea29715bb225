#include "distill/report.h"

#include <fmt/format.h>

#include <cmath>

#include "models/model_stats.h"

namespace distill {
using nlohmann::json;

namespace {

json model_json(const ModelConfig& c, const EvalResult& e, int64_t S, int64_t T) {
  const auto p = count_parameters(c);
  const double flops = forward_flops(c, S, T);
  return {{"model_type", c.model_type},
          {"parameters",
           {{"total", p.total}, {"embedding", p.embedding}, {"non_embedding", p.non_embedding},
            {"expert", p.expert}, {"active_per_token", p.active_per_token}}},
          {"flops_per_token", flops / static_cast<double>(S + T)},
          {"eval", e.to_json()}};
}

}  // namespace

json build_report(const ReportInputs& in) {
  const int64_t S = in.src_len, T = in.tgt_len;
  json r;
  r["teacher"] = model_json(in.teacher, in.teacher_eval, S, T);
  r["baseline"] = model_json(in.student, in.baseline_eval, S, T);
  r["student"] = model_json(in.student, in.student_eval, S, T);
  r["teacher"]["train_seconds"] = in.teacher_seconds;
  r["baseline"]["train_seconds"] = in.baseline_seconds;
  r["student"]["train_seconds"] = in.student_seconds;

  const double tp = static_cast<double>(count_parameters(in.teacher).total);
  const double sp = static_cast<double>(count_parameters(in.student).total);
  r["compression"] = {{"percent", 100.0 * (1.0 - sp / tp)}, {"ratio", tp / sp},
                      {"flops_per_token_ratio", forward_flops(in.teacher, S, T) / forward_flops(in.student, S, T)}};

  const double t = in.teacher_eval.neg_log_perplexity, b = in.baseline_eval.neg_log_perplexity,
               s = in.student_eval.neg_log_perplexity;
  json quality = {{"metric", "negative log perplexity (higher is better)"},
                  {"teacher", t}, {"baseline", b}, {"student", s},
                  {"teacher_minus_baseline", t - b},
                  // Plain retention on the positive NLL (a ratio of the negative scores reads above
                  // 100% when the student is worse): below 100% when the student is worse.
                  {"retention_percent", 100.0 * in.teacher_eval.nll / in.student_eval.nll},
                  {"accuracy_retention_percent", 100.0 * in.student_eval.accuracy / in.teacher_eval.accuracy}};
  json warnings = json::array();
  if (std::abs(t - b) > 0) {
    quality["gain_preserved_percent"] = 100.0 * (s - b) / (t - b);
  } else {
    quality["gain_preserved_percent"] = nullptr;
  }
  // Noise of the evaluation: standard errors of the per-batch NLL means, combined.
  const double noise = 2.0 * std::sqrt(in.teacher_eval.nll_stderr * in.teacher_eval.nll_stderr +
                                       in.baseline_eval.nll_stderr * in.baseline_eval.nll_stderr);
  quality["gap_noise_2se"] = noise;
  if (std::abs(t - b) <= noise) {
    warnings.push_back(fmt::format("the teacher-baseline gap ({:.4f} nats) is within the evaluation's noise (2 standard errors "
                                   "= {:.4f}): the quality gain preserved is not meaningful; evaluate on more data or "
                                   "train longer", t - b, noise));
  }
  if (t < b) warnings.push_back("the teacher is worse than the dense baseline: there is no gain to preserve");
  r["quality"] = quality;
  r["warnings"] = warnings;

  const auto& c = in.config;
  r["settings"] = {{"hard_weight", c.distillation.hard_weight}, {"soft_weight", c.distillation.soft_weight},
                   {"temperature", c.distillation.temperature}, {"soft_loss", c.distillation.soft_loss},
                   {"student_init", c.student.init}, {"copy_non_expert", c.student.copy_non_expert},
                   {"steps", c.training.steps}, {"batch_size", c.data.batch_size}, {"objective", c.data.objective},
                   {"input_length", S}, {"target_length", T}, {"eval_tokens", in.student_eval.tokens},
                   {"seed", c.seed}};
  if (c.distillation.teacher_capacity_factor) r["settings"]["teacher_capacity_factor"] = *c.distillation.teacher_capacity_factor;
  return r;
}

std::string report_markdown(const json& r) {
  auto row = [&](const char* who) {
    const auto& m = r[who];
    const auto& e = m["eval"];
    return fmt::format("| {} | {} | {} | {} | {:.3g} | {:.4f} | {:.2f} | {:.2f}% |\n", who,
                       m["parameters"]["total"].get<int64_t>(), m["parameters"]["non_embedding"].get<int64_t>(),
                       m["parameters"]["active_per_token"].get<int64_t>(), m["flops_per_token"].get<double>(),
                       e["neg_log_perplexity"].get<double>(), e["perplexity"].get<double>(),
                       100.0 * e["accuracy"].get<double>());
  };
  std::string md = "# Distillation report\n\n";
  md += "| model | parameters | non-embedding | active per token | FLOPs per token | neg. log perplexity | perplexity | token accuracy |\n";
  md += "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  md += row("teacher") + row("baseline") + row("student");
  const auto& q = r["quality"];
  md += fmt::format("\n- Compression: **{:.1f}%** fewer parameters ({:.2f}x smaller); {:.2f}x the FLOPs per token.\n",
                    r["compression"]["percent"].get<double>(), r["compression"]["ratio"].get<double>(),
                    r["compression"]["flops_per_token_ratio"].get<double>());
  if (q["gain_preserved_percent"].is_null()) {
    md += "- Quality gain preserved: undefined (teacher and baseline are equal).\n";
  } else {
    md += fmt::format("- Quality gain preserved: **{:.1f}%** = (student - baseline) / (teacher - baseline) on negative log "
                      "perplexity = ({:.4f} - {:.4f}) / ({:.4f} - {:.4f}).\n",
                      q["gain_preserved_percent"].get<double>(), q["student"].get<double>(), q["baseline"].get<double>(),
                      q["teacher"].get<double>(), q["baseline"].get<double>());
  }
  md += fmt::format("- Plain retention: {:.1f}% of the teacher's per-token likelihood (teacher NLL / student NLL), {:.1f}% of "
                    "its token accuracy.\n",
                    q["retention_percent"].get<double>(), q["accuracy_retention_percent"].get<double>());
  md += fmt::format("- Evaluation noise (2 standard errors of the teacher-baseline gap): {:.4f} nats on {} target tokens.\n",
                    q["gap_noise_2se"].get<double>(), r["settings"]["eval_tokens"].get<int64_t>());
  const auto& s = r["settings"];
  md += fmt::format("- Settings: {} hard + {} soft ({}, T = {}), student init `{}`{}, {} steps of batch {}, objective {}.\n",
                    s["hard_weight"].get<double>(), s["soft_weight"].get<double>(), s["soft_loss"].get<std::string>(),
                    s["temperature"].get<double>(), s["student_init"].get<std::string>(),
                    s["copy_non_expert"].get<bool>() ? " with non-expert weights copied" : "",
                    s["steps"].get<int64_t>(), s["batch_size"].get<int64_t>(), s["objective"].get<std::string>());
  for (const auto& w : r["warnings"]) md += "- **Warning:** " + w.get<std::string>() + "\n";
  return md;
}

std::string report_summary(const json& r) {
  const auto& q = r["quality"];
  std::string s = fmt::format(
      "teacher  {:>10} params  neg-log-ppl {:.4f}\nbaseline {:>10} params  neg-log-ppl {:.4f}\nstudent  {:>10} params  "
      "neg-log-ppl {:.4f}\ncompression {:.1f}% ({:.2f}x), quality gain preserved {}\n",
      r["teacher"]["parameters"]["total"].get<int64_t>(), q["teacher"].get<double>(),
      r["baseline"]["parameters"]["total"].get<int64_t>(), q["baseline"].get<double>(),
      r["student"]["parameters"]["total"].get<int64_t>(), q["student"].get<double>(),
      r["compression"]["percent"].get<double>(), r["compression"]["ratio"].get<double>(),
      q["gain_preserved_percent"].is_null() ? std::string("undefined")
                                           : fmt::format("{:.1f}%", q["gain_preserved_percent"].get<double>()));
  for (const auto& w : r["warnings"]) s += "warning: " + w.get<std::string>() + "\n";
  return s;
}

}  // namespace distill
