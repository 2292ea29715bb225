// The YAML run configuration: everything a train / distill / run job needs, with defaults.
// Every field is listed once in visit_config (run_config.cpp), which both the strict reader and
// the writer of the resolved config use.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace distill {

struct CorpusConfig {
  std::vector<std::string> files;     // corpus files, read in order
  std::string format = "text";        // text | jsonl | tsv | jsonl_pairs
  std::string text_field = "text";    // jsonl: field with the text
  std::string input_field = "input";  // jsonl_pairs: source field
  std::string target_field = "target";  // jsonl_pairs: target field
  bool blank_line_documents = false;  // text: blank lines separate documents (else one per line)
};

struct TokenizerConfig {
  std::string path;                   // spiece.model or a directory with it; empty: the teacher's, or train one
  int64_t vocab_size = 8000;          // when training: total ids, sentinels included
  int64_t sentinels = 100;            // when training: <extra_id_*> ids
  int64_t max_sentences = 200000;     // when training: sentences sampled
};

struct DataConfig {
  TokenizerConfig tokenizer;
  CorpusConfig train;                 // training corpus
  CorpusConfig validation;            // held-out corpus; empty files: split from train
  double validation_fraction = 0.05;  // share of training documents held out when validation has no files
  std::string objective = "span_corruption";  // span_corruption | seq2seq | prefix_lm
  double noise_density = 0.15;        // span corruption: fraction of tokens masked
  double mean_span_length = 3.0;      // span corruption: mean masked span
  int64_t input_length = 128;         // encoder tokens per example, at most
  int64_t target_length = 32;         // decoder tokens per example, at most
  int64_t batch_size = 16;            // examples per batch
  int64_t max_batch_tokens = 0;       // cap on padded tokens per batch; 0 = none
  bool pack = true;                   // concatenate documents before chunking (not for pairs)
  bool static_examples = false;       // make the examples once and reuse them every epoch (only their
                                      // order changes); needed by distillation.teacher_cache
  int64_t eval_batches = 0;           // validation batches per evaluation; 0 = all
  std::optional<int64_t> seed;        // data order, split and corruption noise; null: the run's seed.
                                      // Seed replicas (`seeds`) share it, so they see the same batches
};

// Architecture of a model trained from scratch (teacher.model) or of the student (overrides).
struct ArchConfig {
  int64_t d_model = 128;              // D
  int64_t d_ff = 512;                 // F
  int64_t d_kv = 32;                  // head width
  int64_t num_heads = 4;              // H
  int64_t num_layers = 4;             // encoder blocks
  int64_t num_decoder_layers = 4;     // decoder blocks
  std::string feed_forward_proj = "relu";  // relu | gated-gelu
  bool tie_word_embeddings = true;    // LM head shares the embedding
  int64_t relative_attention_num_buckets = 32;     // position-bias buckets
  int64_t relative_attention_max_distance = 128;   // saturation distance
  int64_t num_experts = 8;            // E (teacher); 0 = dense
  int64_t sparse_step = 2;            // every sparse_step-th block is sparse (HF rule), both stacks
  std::optional<int64_t> encoder_sparse_step;  // the encoder's own; 0 = a dense encoder; null: sparse_step
  std::optional<int64_t> decoder_sparse_step;  // the decoder's own; 0 = a dense decoder; null: sparse_step
  std::string capacity_mode = "factor";  // factor (paper, per batch) | fixed (HF, per sequence)
  int64_t expert_capacity = 64;       // fixed mode: tokens per expert and sequence. Factor mode saves
                                      // ceil(capacity_factor_eval * max(input, target length) / E) in
                                      // config.json, the rule Hugging Face applies per sequence
  double capacity_factor_train = 1.25;  // factor mode, training
  double capacity_factor_eval = 2.0;    // factor mode, evaluation
  int64_t router_top_k = 1;           // experts per token
  std::string router_loss = "paper";  // paper: layers' router losses averaged | hf: Hugging Face's,
                                      // over the stack's layers concatenated
  double router_jitter_noise = 0.01;  // multiplicative router-input noise in training
  double router_z_loss_coef = 0.001;  // z-loss weight in training
  double router_aux_loss_coef = 0.01; // load-balancing loss weight in training (paper: 0.01)
  bool router_ignore_padding = true;  // padding takes no expert, capacity or router-loss share (Mesh
                                      // TensorFlow's Switch; Hugging Face routes padding)
};

struct OptimizerConfig {
  std::string name = "adamw";         // adamw | adafactor
  double lr = 1e-3;                   // peak learning rate (adafactor: with schedule)
  double beta1 = 0.9;                 // adamw
  double beta2 = 0.999;               // adamw
  double eps = 1e-8;                  // adamw
  double weight_decay = 0.01;         // adamw, decoupled
  double adafactor_decay_rate = 0.8;  // adafactor: second-moment decay 1 - step^-rate
  double adafactor_clip_threshold = 1.0;  // adafactor: update RMS clipping
};

struct ScheduleConfig {
  std::string name = "inverse_sqrt";  // constant | linear_warmup | inverse_sqrt | cosine
  int64_t warmup_steps = 100;         // linear warm-up (all but constant)
  double min_lr_ratio = 0.1;          // cosine: final lr / peak lr
};

struct TrainingConfig {
  int64_t steps = 1000;               // optimizer steps
  int64_t grad_accumulation = 1;      // micro-batches per optimizer step
  double grad_clip = 1.0;             // global L2 norm clip; 0 = off
  double dropout = 0.1;               // dropout rate of the model being trained
  double expert_dropout = 0.1;        // dropout inside experts (sparse models)
  bool bf16 = false;                  // bfloat16 matrix products with float32 accumulation (bf16 weight
                                      // copies made once per step) for the baseline and the student (a
                                      // teacher trained here: teacher.train_bf16); master weights,
                                      // optimizer state, router, norms, softmaxes and losses stay float32.
                                      // true, false or `auto` (the default): true where the CPU
                                      // multiplies bf16 natively (native_bf16_products), decided at load
  double init_scale = 0.1;            // from-scratch init: truncated normal, std sqrt(s / fan_in)
  bool expert_grad_scaling = false;   // Artetxe et al.: scale expert gradients by 1/sqrt(E)
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  int64_t log_interval = 50;          // steps between progress lines
  int64_t eval_interval = 500;        // steps between evaluations; 0 = only at the end
  int64_t checkpoint_interval = 500;  // steps between checkpoints; 0 = only at the end
  int64_t keep_checkpoints = 2;       // most recent checkpoints kept
};

struct TeacherConfig {
  std::string path;                   // an existing checkpoint; empty: train one (model + training)
  std::string init_from;              // a checkpoint the teacher starts from and trains on `data` for
                                      // teacher.steps (fine-tuning); its trained_tokens states the
                                      // checkpoint's budget. Empty: from scratch (or pretrain's teacher)
  ArchConfig model;                   // architecture when training
  std::optional<int64_t> steps;       // teacher training steps; default: training.steps (a teacher
                                      // usually trains longer than the distillation runs)
  bool bf16 = false;                  // the frozen teacher's matrix products in bfloat16 (float32
                                      // accumulation; weights cast once); router, norms stay float32.
                                      // true, false or `auto` (the default), as training.bf16
  bool train_bf16 = false;            // the training of a teacher trained here (and of its dense
                                      // counterpart in `distill compare`) with bf16 products: true, false
                                      // or `auto` (the default), as training.bf16. Its own key because the
                                      // Switch teacher is the model whose quality bf16 might move: within
                                      // float32's own rounding noise on the demo (README)
  std::optional<int64_t> trained_tokens;  // with path or init_from: the tokens it was trained on, when
                                          // known (the budget check and the baseline's default steps use it)
  bool train_once = false;            // with seeds > 1: train one teacher (the first seed's) and distill
                                      // every seed's student from it
};

// The dense baseline: the student's shape trained on ground truth alone, with the student's whole
// budget (its teacher's training plus its own steps), so the teacher-baseline gap is what the
// experts buy.
struct BaselineConfig {
  std::optional<int64_t> steps;       // default: teacher steps + training.steps (teacher.path: the steps
                                      // teacher.trained_tokens takes at this batch, + training.steps)
  std::string path;                   // an existing dense checkpoint instead (the paper's t5-base)
  int64_t continue_steps = 0;         // with path: ground-truth steps on top of it (training.steps puts
                                      // it on the student's extra budget)
  std::optional<int64_t> trained_tokens;  // with path or init_from: the tokens it was trained on, when known
  std::string init_from;              // a dense checkpoint the baseline starts from and trains on `data`
                                      // for its default steps (the teacher's fine-tuning plus the student's)
};

struct StudentConfig {
  std::string init = "fresh";         // FFN in expert positions: fresh | mean | router_weighted |
                                      // top_expert | concat_top_k | merge_aligned (student_init.h)
  bool copy_non_expert = true;        // initialise every non-expert tensor from the teacher
  int64_t calibration_batches = 8;    // batches used to measure routing frequency (router_weighted,
                                      // top_expert, concat_top_k, merge_aligned)
  std::optional<int64_t> d_ff;        // student FFN width; default: the teacher's (concat_top_k:
                                      // top_k x the teacher's)
  int64_t top_k = 2;                  // concat_top_k: the most-routed experts concatenated per layer
  std::string weighting = "frequency";  // concat_top_k: the experts' outputs mixed by routed frequency
                                        // (renormalised over the k) | plain (equal shares)
  std::string schedule = "restart";   // learning-rate schedule: restart (a fresh run's, warm-up included:
                                      // the paper's) | continue (from the teacher's last step, so the
                                      // student's whole path has the baseline's schedule)
};

struct DistillationConfig {
  double hard_weight = 0.75;          // weight of CE against the ground truth
  double soft_weight = 0.25;          // weight of the soft-label term against the teacher
  double temperature = 1.0;           // softmax temperature of both sides in the soft term (scaled by T^2)
  std::string soft_loss = "ce";       // ce (the paper) | kl (same gradient, 0 when equal) |
                                      // reverse_kl | jsd (losses.h)
  double jsd_beta = 0.5;              // jsd: the teacher's share of the mixture; 0 = kl, 1 = reverse_kl
  double hidden_weight = 0.0;         // weight of hidden-state matching; 0 = off
  std::string hidden_loss = "mse";    // mse | cosine, per token, over real tokens
  std::vector<std::string> hidden_layers;  // pairs "encoder.2" or "decoder.1:decoder.3" (student:teacher,
                                           // Hugging Face's hidden_states index: 0 embeddings, i block
                                           // i's output); empty: every block output of both stacks
  std::optional<double> teacher_capacity_factor = 2.0;  // teacher eval capacity factor; null: the checkpoint's
  bool teacher_cache = false;         // keep the teacher's top-k probabilities per target token so later
                                      // epochs skip the teacher (needs data.static_examples)
  int64_t teacher_cache_top_k = 32;   // k; the rest of the teacher's mass is kept as one number
  bool teacher_cache_disk = false;    // compute the teacher's top-k targets of the student's batches once
                                      // into a file (next to the teacher, or in stages_dir) that every
                                      // student of this teacher with the same data, steps, k and
                                      // temperature memory-maps: a sweep's variants run the teacher once
                                      // (needs data.static_examples)
};

// Pre-training before the task: the teacher and the dense baseline are first trained from scratch
// on `data` here (both for `steps`: the student inherits the teacher's pre-training, so the baseline
// gets as much), then both are fine-tuned on the run's `data` (teacher.steps, and the baseline the
// teacher's fine-tuning plus the student's steps) and the student distills from the fine-tuned teacher.
struct PretrainConfig {
  int64_t steps = 0;                  // pre-training steps of the teacher and of the baseline; 0 = none
  DataConfig data;                    // the pre-training corpus, objective, lengths and batch; its
                                      // tokenizer section is unused (data.tokenizer serves both, trained
                                      // on this corpus)
};

// A task judged by its own metric: held-out pairs decoded greedily by every model.
struct TaskConfig {
  CorpusConfig test;                  // input/target pairs (tsv | jsonl_pairs); no files: no task metrics
  int64_t max_examples = 0;           // pairs scored, from the top of the file; 0 = all
  int64_t max_new_tokens = 64;        // decoder tokens at most per prediction (1-4096)
  int64_t batch_size = 128;           // pairs decoded together (1-8192)
  bool classification = false;        // the targets are class labels: accuracy too
  int64_t bootstrap_resamples = 1000; // resamples of the examples for the bootstrap intervals
};

struct RunConfig {
  std::string output_dir = "runs/default";  // everything the run writes
  uint64_t seed = 1234;               // every random choice derives from it
  int64_t seeds = 1;                  // replicas of the baseline and student (and teacher, unless
                                      // teacher.train_once) with model seeds seed + 1000 i, same data
                                      // order; the report gives means, spreads and 95% intervals
  int threads = 0;                    // 0 = cores available (--threads wins)
  int64_t parallel_stages = 0;        // stages trained side by side, each in a process of its own with an
                                      // equal share of the threads; 0 = one per thread; 1 = in turn, here
  std::string stages_dir;             // where the tokenizer, teacher, baseline and dense stages live, each
                                      // in a directory named by the hash of what determines it, so runs
                                      // pointed at one share them (a sweep does); empty: OUTPUT/<stage>
                                      // (OUTPUT/stages with pretrain.steps > 0)
  DataConfig data;
  PretrainConfig pretrain;            // pre-training before the task (the teacher and the baseline)
  TaskConfig task;                    // task metrics from decoding
  TeacherConfig teacher;
  BaselineConfig baseline;
  StudentConfig student;
  DistillationConfig distillation;
  TrainingConfig training;            // baseline and student (and teacher unless it has its own)

  int64_t seed_index = 0;             // not a key: which seed replica this is (replica_config sets it)
  bool pretraining = false;           // not a key: a run's pre-training (pretrain_config and `distill stage
                                      // --pretraining` set it); its stages' log lines say so
  std::vector<std::string> bf16_auto; // not a key: the bf16 keys set to auto, decided at load, for
                                      // the log line that says what the CPU chose
};

// Reads `path`, applies `overrides` ("a.b=value"), and validates. Every unknown key (with a
// "did you mean"), wrong type and out-of-range value is reported at once with file:line
// (ConfigError). Relative paths are taken from the current directory, like any CLI argument.
// `foreign_keys`: top-level keys another reader owns (a sweep's `sweep`), left alone.
RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides = {},
                          const std::vector<std::string>& foreign_keys = {});

// The fully resolved configuration as YAML (every key, defaults included).
std::string run_config_yaml(const RunConfig& config);
// The same as JSON, for stage fingerprints.
nlohmann::json run_config_json(const RunConfig& config);

// Levenshtein distance, for "did you mean".
size_t edit_distance(const std::string& a, const std::string& b);

// The key of `known` closest to an unknown `key` (edit distance under 4), for "did you mean";
// empty when none is that close.
std::string closest_key(const std::string& key, const std::vector<std::string>& known);

}  // namespace distill
