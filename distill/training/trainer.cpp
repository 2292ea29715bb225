#include "distill/training/trainer.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "distill/process/interrupt.h"
#include "distill/training/optim.h"
#include "models/io/atomic_file.h"
#include "models/io/checkpoint.h"
#include "models/kernels/mixed_precision.h"
#include "models/arch/model_stats.h"
#include "models/io/safetensors.h"

namespace distill {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string format_duration(double s) {
  const auto t = static_cast<int64_t>(s);
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t % 3600) / 60);
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

void append_jsonl(const std::string& path, const json& j) {
  std::ofstream out(path, std::ios::app);
  out << j.dump() << "\n";
  out.flush();
  if (!out) throw Error(path + ": cannot append the metrics (" + std::strerror(errno) + "); is the disk full?");
}

// After a resume from `step`, the lines a killed run logged past it would appear twice: keep
// only those up to it (and drop a line cut short by the kill).
void truncate_metrics(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::istringstream in(read_text_file(path));
  std::string kept;
  for (std::string line; std::getline(in, line);) {
    const auto j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.value("step", int64_t{0}) <= step) kept += line + "\n";
  }
  write_text_atomic(path, kept);
}

at::Generator& cpu_generator() {
  static at::Generator gen = at::detail::getDefaultCPUGenerator();
  return gen;
}

}  // namespace

struct Trainer::StepLosses {
  double total = 0, hard = 0, soft = 0, kl = 0, aux = 0, z = 0, hidden = 0;
  int64_t tokens = 0, examples = 0;
  double flops = 0;  // forward + backward of the model, and the teacher's forward if it ran
};

void scale_expert_gradients(const NamedParams& params, double factor) {
  torch::NoGradGuard ng;
  for (const auto& [name, p] : params)
    if (is_expert_parameter(name) && p.grad().defined()) p.grad().mul_(factor);
}

std::vector<std::string> finished_checkpoints(const std::string& dir) {
  const fs::path root = fs::path(dir) / "checkpoints";
  std::vector<std::string> names;
  if (!fs::is_directory(root)) return {};
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("step-", 0) != 0 || name.find('.') != std::string::npos) continue;
    if (!fs::exists(e.path() / "trainer_state.json")) continue;
    names.push_back(name);
  }
  std::sort(names.begin(), names.end(), std::greater<>());  // step-%08d: newest first
  std::vector<std::string> out;
  for (const auto& n : names) out.push_back((root / n).string());
  return out;
}

std::string latest_checkpoint(const std::string& dir) {
  const auto all = finished_checkpoints(dir);
  return all.empty() ? "" : all.front();
}

Trainer::Trainer(Seq2SeqModel model, std::shared_ptr<const Dataset> data, const std::vector<Batch>* eval_batches,
                 TrainerOptions options, std::optional<TeacherSignal> teacher)
    : model_(std::move(model)), data_(std::move(data)), eval_(eval_batches), o_(std::move(options)), teacher_(std::move(teacher)) {
  for (const auto& item : model_->named_parameters()) params_.emplace_back(item.key(), item.value());
  optimizer_ = make_optimizer(params_, o_.training.optimizer);
  if (teacher_) {
    teacher_->teacher->eval();
    for (auto& p : teacher_->teacher->parameters()) p.set_requires_grad(false);
    if (teacher_->targets) cache_ = teacher_->targets;
    else if (teacher_->cache_top_k > 0) cache_ = std::make_shared<TeacherCache>(teacher_->cache_top_k, teacher_->loss.temperature);
  }
}

Trainer::StepLosses Trainer::train_step(const Batch& b, double scale, const std::function<bool(StepLosses&)>& before_backward) {
  StepLosses l;
  Seq2SeqInputs in = model_inputs(b, /*labels=*/true);
  const int64_t B = b.input_ids.size(0), S = b.input_ids.size(1), T = b.labels.size(1);
  l.flops = 3.0 * static_cast<double>(B) * forward_flops(model_->config(), S, T);
  torch::Tensor loss;
  if (teacher_) {
    const bool hidden = teacher_->hidden_weight > 0;
    Seq2SeqOutput t_out;
    auto teacher_logits = [&] {
      c10::InferenceMode frozen;
      l.flops += static_cast<double>(B) * forward_flops(teacher_->teacher->config(), S, T);
      t_out = teacher_->teacher->forward(model_inputs(b), hidden);
      return t_out.logits;
    };
    in.labels = torch::Tensor();
    DistillLoss d;
    Seq2SeqOutput s_out;
    if (cache_) {
      auto targets = cache_->targets(b, teacher_logits);
      Bf16Products amp(o_.training.bf16);
      s_out = model_->forward(in, hidden);
      d = distillation_loss(s_out.logits, targets, b.labels, teacher_->loss);
    } else {
      auto t = teacher_logits();
      Bf16Products amp(o_.training.bf16);
      s_out = model_->forward(in, hidden);
      d = distillation_loss(s_out.logits, t, b.labels, teacher_->loss);
    }
    loss = d.total;
    if (hidden) {
      auto h = hidden_state_loss(s_out.encoder_hidden_states, s_out.decoder_hidden_states, t_out.encoder_hidden_states,
                                 t_out.decoder_hidden_states, teacher_->hidden_pairs, b.attention_mask, b.labels != -100,
                                 teacher_->hidden_loss);
      loss = loss + teacher_->hidden_weight * h;
      l.hidden = h.item<double>();
    }
    l.hard = d.hard.item<double>();
    l.soft = d.soft.item<double>();
    l.kl = d.kl.item<double>();
  } else {
    Bf16Products amp(o_.training.bf16);
    auto out = model_->forward(in);
    loss = out.loss;
    l.hard = out.ce_loss.item<double>();
    l.aux = (out.encoder_aux_loss + out.decoder_aux_loss).item<double>();
    l.z = (out.encoder_z_loss + out.decoder_z_loss).item<double>();
    for (const auto& [prefix, r] : out.routing) routing_.add(prefix, r, routed_tokens(prefix, b));
  }
  l.total = loss.item<double>();
  l.tokens = b.input_tokens + b.target_tokens;
  l.examples = B;
  if (before_backward) {
    if (!before_backward(l)) return l;
  } else if (!std::isfinite(l.total)) {
    return l;
  }
  (loss * scale).backward();
  return l;
}

void Trainer::log_routing(json& metrics) {
  if (routing_.empty()) return;
  const auto layers = routing_.layers();
  json list = json::array();
  const LayerRouting* worst = &layers.front();
  int64_t dead = 0;
  double gate = 0;
  for (const auto& l : layers) {
    list.push_back(l.to_json());
    if (l.dropped_rate > worst->dropped_rate) worst = &l;
    dead += l.dead_experts;
    gate += l.mean_gate / static_cast<double>(layers.size());
  }
  metrics["routing"] = list;
  spdlog::info("[{}] routing: most dropped {:.1f}% ({}), {} dead experts, mean gate {:.3f} (uniform {:.3f})", o_.stage,
               100 * worst->dropped_rate, worst->layer, dead, gate, 1.0 / static_cast<double>(worst->load.size()));
  routing_.clear();
}

TrainingError Trainer::diverged(const std::string& what) const {
  const auto last = latest_checkpoint(o_.dir);
  return TrainingError(fmt::format("[{}] {}: training diverged; {}", o_.stage, what,
                                   last.empty() ? "no checkpoint was written yet" : "the last good checkpoint is " + last));
}

void Trainer::save_checkpoint(int64_t step, const DataPosition& next) {
  // A checkpoint is written only from finite state: resuming must never start from poison.
  const auto first_non_finite = [](const NamedParams& tensors) -> std::string {
    for (const auto& [name, tensor] : tensors)
      if (tensor.defined() && tensor.is_floating_point() && !torch::isfinite(tensor).all().item<bool>()) return name;
    return "";
  };
  std::string bad = first_non_finite(params_);
  if (bad.empty()) bad = first_non_finite(optimizer_->state());
  if (!bad.empty()) throw diverged(fmt::format("{} is not finite at step {}, so no checkpoint is written", bad, step));
  at::Tensor rng;
  {
    std::lock_guard<std::mutex> lock(cpu_generator().mutex());
    rng = cpu_generator().get_state();
  }
  std::vector<std::pair<std::string, at::Tensor>> rngs = {{"torch_cpu", rng}};
  const int64_t ranks = o_.dist ? o_.dist->world_size() : 1;
  if (o_.dist) {
    // Every rank's generator (its dropout), gathered for rank 0 to write: resume is exact per rank.
    auto all = at::zeros({ranks, rng.numel()}, at::kDouble);
    all[o_.dist->rank()].copy_(rng.to(at::kDouble));
    o_.dist->allreduce_sum(std::vector<at::Tensor>{all});
    for (int64_t r = 0; r < ranks; ++r) rngs.emplace_back(fmt::format("torch_cpu_rank{}", r), all[r].to(at::kByte));
  }
  if (!writer()) return;
  const fs::path root = fs::path(o_.dir) / "checkpoints";
  fs::create_directories(root);
  const std::string name = fmt::format("step-{:08d}", step);
  const fs::path tmp = root / (name + ".tmp"), final_dir = root / name;
  std::error_code ec;
  fs::remove_all(tmp, ec);
  save_model(model_, tmp.string());
  save_safetensors((tmp / "optimizer.safetensors").string(), optimizer_->state());
  save_safetensors((tmp / "rng.safetensors").string(), rngs);
  json state = {{"stage", o_.stage}, {"step", step}, {"data_epoch", next.epoch}, {"data_batch", next.batch},
                {"budget", budget_.to_json()}, {"world_size", ranks}};
  write_text_atomic((tmp / "trainer_state.json").string(), state.dump(2) + "\n");
  fs::remove_all(final_dir, ec);
  fs::rename(tmp, final_dir);
  // Keep the newest keep_checkpoints.
  std::vector<fs::path> all;
  for (const auto& e : fs::directory_iterator(root)) {
    const auto n = e.path().filename().string();
    if (n.rfind("step-", 0) == 0 && n.find('.') == std::string::npos) all.push_back(e.path());
  }
  std::sort(all.begin(), all.end());
  for (size_t i = 0; i + static_cast<size_t>(o_.training.keep_checkpoints) < all.size(); ++i) fs::remove_all(all[i], ec);
}

bool Trainer::restore_checkpoint(int64_t& step, DataPosition& next) {
  const auto all = finished_checkpoints(o_.dir);
  const int64_t ranks = o_.dist ? o_.dist->world_size() : 1;
  if (!all.empty()) {
    // Each rank's dropout stream is in the checkpoint: it resumes with the ranks that wrote it.
    const auto state = json::parse(read_text_file(all.front() + "/trainer_state.json"), nullptr, false);
    const int64_t written = state.is_object() ? state.value("world_size", int64_t{1}) : ranks;
    if (written != ranks) {
      throw DistributedError(fmt::format("[{}] {} was written by {} rank(s) and this job has {}: resume with WORLD_SIZE={} "
                                         "(or --nproc {}), or start afresh in another output directory",
                                         o_.stage, all.front(), written, ranks, written, written));
    }
  }
  // The newest checkpoint that reads back whole; a damaged one is skipped with a warning.
  for (const auto& dir : all) {
    try {
      restore_checkpoint_from(dir, step, next);
      return true;
    } catch (const Error& e) {
      spdlog::warn("[{}] checkpoint {} cannot be restored ({}); trying the one before it", o_.stage, dir, e.what());
    }
  }
  return false;
}

void Trainer::restore_checkpoint_from(const std::string& dir, int64_t& step, DataPosition& next) {
  auto tensors = load_model_tensors(dir);
  load_state(model_, tensors, dir + "/model.safetensors");
  auto opt = SafetensorsFile(dir + "/optimizer.safetensors").load_all();
  optimizer_->load_state(opt, dir + "/optimizer.safetensors");
  auto rng = SafetensorsFile(dir + "/rng.safetensors").load(o_.dist ? fmt::format("torch_cpu_rank{}", o_.dist->rank()) : "torch_cpu");
  {
    std::lock_guard<std::mutex> lock(cpu_generator().mutex());
    cpu_generator().set_state(rng);
  }
  json state;
  try {
    state = json::parse(read_text_file(dir + "/trainer_state.json"));
    step = state.at("step").get<int64_t>();
    next = {state.at("data_epoch").get<int64_t>(), state.at("data_batch").get<int64_t>()};
    budget_ = Budget::from_json(state.value("budget", json::object()));
  } catch (const json::exception& e) {
    throw CheckpointError(dir + "/trainer_state.json: " + e.what());
  }
  spdlog::info("[{}] resumed from {} (step {})", o_.stage, dir, step);
}

TrainResult Trainer::run() {
  const auto& t = o_.training;
  drop_freed_bf16_copies();  // an earlier stage's model, trained or evaluated in this process, is gone by now
  fs::create_directories(o_.dir);
  const std::string metrics = (fs::path(o_.dir) / "metrics.jsonl").string();
  int64_t step = 0;
  DataPosition position = o_.start;
  budget_ = {};
  const int64_t rank = o_.dist ? o_.dist->rank() : 0, ranks = o_.dist ? o_.dist->world_size() : 1;
  if (o_.resume && restore_checkpoint(step, position)) {
    if (writer()) truncate_metrics(metrics, step);
  } else {
    torch::manual_seed(o_.seed + 1000003 * static_cast<uint64_t>(rank));  // each rank its own dropout
    if (writer()) std::ofstream(metrics, std::ios::trunc);
  }
  if (o_.dist) {
    // Every rank must be at the same step, with rank 0's weights.
    const auto steps = o_.dist->allgather(static_cast<double>(step));
    for (int64_t r = 0; r < ranks; ++r) {
      if (steps[r] != steps[0]) {
        throw DistributedError(fmt::format("[{}] rank {} starts at step {} and rank 0 at step {}: resuming needs {} on a "
                                           "file system every machine shares", o_.stage, r, steps[r], steps[0], o_.dir));
      }
    }
    std::vector<at::Tensor> weights;
    for (const auto& [name, p] : params_) weights.push_back(p);
    o_.dist->broadcast(weights);
  }
  const double seconds_before = budget_.seconds;
  const interrupt::Scope interruptible;  // Ctrl-C or SIGTERM: checkpoint at the end of the step, then exit 130
  model_->train();
  BatchStream stream(data_, position, 16);
  const int64_t E = model_->config().num_experts;
  const double expert_grad_scale = t.expert_grad_scaling && E > 0 ? 1.0 / std::sqrt(static_cast<double>(E)) : 1.0;

  TrainResult result;
  StepLosses window;
  int64_t window_steps = 0, window_tokens = 0, total_tokens = 0, own_tokens = 0;  // own: this rank's share
  const auto start = std::chrono::steady_clock::now();
  auto window_start = start;
  const int64_t first_step = step;
  int64_t epoch = position.epoch;
  auto epoch_start = start;
  bool stop = false;  // Ctrl-C or SIGTERM on any rank: every rank stops after the same step
  std::unique_ptr<GradientReducer> reducer;
  if (o_.dist) reducer = std::make_unique<GradientReducer>(*o_.dist, params_);
  while (step < t.steps) {
    optimizer_->zero_grad();
    StepLosses sl;
    for (int64_t micro = 0; micro < t.grad_accumulation; ++micro) {
      auto item = stream.next();
      position = item.next;
      StepLosses l;
      if (!o_.dist) {
        l = train_step(item.batch, 1.0 / static_cast<double>(t.grad_accumulation));
        stop = interrupt::requested();
      } else {
        // This rank's rows of the global batch. Its mean losses are weighted by its share of the
        // global batch's target tokens, so the summed gradients are one process's on the whole batch.
        const Batch shard = shard_rows(item.batch, rank, ranks);
        const double share = static_cast<double>(shard.target_tokens) / static_cast<double>(item.batch.target_tokens);
        // The losses are reduced before backward: every rank then knows whether to go on, and the
        // gradient buckets are the only collectives backward starts.
        auto reduce = [&](StepLosses& x) {
          own_tokens += x.tokens;
          const auto g = o_.dist->sum_over_ranks({x.total * share, x.hard * share, x.soft * share, x.kl * share, x.aux * share,
                                                  x.z * share, x.hidden * share, static_cast<double>(x.tokens),
                                                  static_cast<double>(x.examples), x.flops, interrupt::requested() ? 1.0 : 0.0});
          x = {g[0], g[1], g[2], g[3], g[4], g[5], g[6], static_cast<int64_t>(g[7]), static_cast<int64_t>(g[8]), g[9]};
          stop = g[10] > 0;
          return std::isfinite(x.total);
        };
        if (micro + 1 == t.grad_accumulation) reducer->arm();  // the step's last backward reduces as it goes
        if (shard.input_ids.size(0) > 0) {
          l = train_step(shard, share / static_cast<double>(t.grad_accumulation), reduce);
        } else {
          reduce(l);  // no rows for this rank: it still takes part
        }
      }
      if (!std::isfinite(l.total)) throw diverged(fmt::format("loss is {} at step {}", l.total, step + 1));
      const double k = 1.0 / static_cast<double>(t.grad_accumulation);
      sl.total += l.total * k;
      sl.hard += l.hard * k;
      sl.soft += l.soft * k;
      sl.kl += l.kl * k;
      sl.aux += l.aux * k;
      sl.z += l.z * k;
      sl.hidden += l.hidden * k;
      sl.tokens += l.tokens;
      sl.examples += l.examples;
      sl.flops += l.flops;
    }
    if (reducer) reducer->finish();
    if (expert_grad_scale != 1.0) scale_expert_gradients(params_, expert_grad_scale);
    const double grad_norm = clip_grad_norm(params_, t.grad_clip);
    // Checked before the update, so the weights and optimizer state stay those of the last good step.
    if (!std::isfinite(grad_norm)) throw diverged(fmt::format("gradient norm is {} at step {}", grad_norm, step + 1));
    const double lr = schedule_lr(t.schedule, t.optimizer.lr, o_.schedule_offset + step + 1, o_.schedule_offset + t.steps);
    optimizer_->step(lr);
    ++step;
    window.total += sl.total;
    window.hard += sl.hard;
    window.soft += sl.soft;
    window.kl += sl.kl;
    window.aux += sl.aux;
    window.z += sl.z;
    window.hidden += sl.hidden;
    window_tokens += sl.tokens;
    total_tokens += sl.tokens;
    ++window_steps;
    budget_.steps = step;
    budget_.world_size = ranks;
    budget_.examples += sl.examples;
    budget_.tokens += sl.tokens;
    budget_.train_flops += sl.flops;
    budget_.seconds = seconds_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    if (position.epoch > epoch) {
      // Per-epoch wall time: with the teacher cache, epochs after the first skip the teacher.
      const auto now = std::chrono::steady_clock::now();
      const double seconds = std::chrono::duration<double>(now - epoch_start).count();
      json m = {{"stage", o_.stage}, {"step", step}, {"epoch", epoch}, {"epoch_seconds", seconds}};
      std::string extra;
      if (cache_) {
        m["teacher_cache"] = {{"hits", cache_->hits()}, {"misses", cache_->misses()}, {"examples", cache_->examples()},
                              {"megabytes", cache_->megabytes()}};
        extra = fmt::format(" (teacher cache: {} of {} batches served, {} examples, {:.1f} MB)", cache_->hits(),
                            cache_->hits() + cache_->misses(), cache_->examples(), cache_->megabytes());
      }
      if (writer()) append_jsonl(metrics, m);
      spdlog::info("[{}] epoch {} done at step {} in {}{}", o_.stage, epoch, step, format_duration(seconds), extra);
      epoch = position.epoch;
      epoch_start = now;
    }
    if (step % t.log_interval == 0 || step == t.steps) {
      const auto now = std::chrono::steady_clock::now();
      const double dt = std::chrono::duration<double>(now - window_start).count();
      const double elapsed = std::chrono::duration<double>(now - start).count();
      const double tps = dt > 0 ? static_cast<double>(window_tokens) / dt : 0.0;
      const double eta = elapsed / static_cast<double>(step - first_step) * static_cast<double>(t.steps - step);
      const double n = static_cast<double>(window_steps);
      json m = {{"stage", o_.stage}, {"step", step}, {"loss", window.total / n}, {"hard", window.hard / n},
                {"lr", lr}, {"grad_norm", grad_norm}, {"tokens_per_s", tps}, {"tokens", budget_.tokens}};
      std::string extra;
      if (teacher_) {
        m["soft"] = window.soft / n;
        m["kl"] = window.kl / n;
        extra = fmt::format(" (hard {:.4f} soft {:.4f}", window.hard / n, window.soft / n);
        if (teacher_->hidden_weight > 0) {
          m["hidden"] = window.hidden / n;
          extra += fmt::format(" hidden {:.4f}", window.hidden / n);
        }
        extra += ")";
      } else if (E > 0) {
        m["aux"] = window.aux / n;
        m["z"] = window.z / n;
        extra = fmt::format(" (ce {:.4f} aux {:.3f} z {:.3f})", window.hard / n, window.aux / n, window.z / n);
      }
      spdlog::info("[{}] step {}/{} loss {:.4f}{} lr {:.2e} | {:.0f} tok/s | ETA {}", o_.stage, step, t.steps,
                   window.total / n, extra, lr, tps, format_duration(eta));
      log_routing(m);
      if (writer()) append_jsonl(metrics, m);
      window = {};
      window_steps = window_tokens = 0;
      window_start = now;
    }
    if (eval_ && t.eval_interval > 0 && step % t.eval_interval == 0 && step != t.steps) {
      auto e = evaluate(model_, *eval_, o_.dist);
      if (writer()) append_jsonl(metrics, {{"stage", o_.stage}, {"step", step}, {"tokens", budget_.tokens}, {"eval", e.to_json()}});
      spdlog::info("[{}] eval at step {}: nll {:.4f} ppl {:.2f} acc {:.3f}", o_.stage, step, e.nll, e.perplexity, e.accuracy);
    }
    const bool checkpoint_due = t.checkpoint_interval > 0 && step % t.checkpoint_interval == 0;
    if (stop) {
      save_checkpoint(step, position);
      throw InterruptedError(fmt::format("[{}] interrupted at step {}; checkpoint saved in {}; continue with --resume",
                                         o_.stage, step, latest_checkpoint(o_.dir)));
    }
    if (checkpoint_due && step != t.steps) save_checkpoint(step, position);
  }
  result.steps = step;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.tokens_per_second = result.seconds > 0 ? static_cast<double>(total_tokens) / result.seconds : 0.0;
  result.end = position;
  if (eval_) {
    result.eval = evaluate(model_, *eval_, o_.dist);
    if (writer()) append_jsonl(metrics, {{"stage", o_.stage}, {"step", step}, {"eval", result.eval->to_json()}});
    spdlog::info("[{}] eval at step {}: nll {:.4f} ppl {:.2f} acc {:.3f}", o_.stage, step, result.eval->nll,
                 result.eval->perplexity, result.eval->accuracy);
    for (const auto& w : routing_warnings(result.eval->routing, "[" + o_.stage + "]")) spdlog::warn("{}", w);
  }
  save_checkpoint(step, position);
  // Each rank's own throughput (its share of the tokens over the loop's wall time).
  budget_.tokens_per_s_by_rank =
      o_.dist ? o_.dist->allgather(result.seconds > 0 ? static_cast<double>(own_tokens) / result.seconds : 0.0)
              : std::vector<double>{result.tokens_per_second};
  result.budget = budget_;
  if (!writer()) {
    o_.dist->barrier();  // until rank 0 has written the model the stage's caller reads back
    return result;
  }
  save_model(model_, (fs::path(o_.dir) / "model").string(), o_.copy_files);
  json done = {{"stage", o_.stage},
               {"steps", step},
               {"seconds", budget_.seconds},
               {"tokens_per_s", result.tokens_per_second},
               {"budget", budget_.to_json()},
               {"data_end", {{"epoch", position.epoch}, {"batch", position.batch}}}};
  write_text_atomic((fs::path(o_.dir) / "DONE.json").string(), done.dump(2) + "\n");
  if (o_.dist) o_.dist->barrier();
  return result;
}

}  // namespace distill
