// distill tokenizer train|encode, and distill generate (text in, text out).
#include <torch/torch.h>

#include <iostream>

#include "data/tokenizer.h"
#include "distill/cli/commands.h"
#include "distill/pipeline/stage_training.h"
#include "models/io/checkpoint.h"
#include "models/errors.h"
#include "models/arch/generate.h"

namespace distill::cli {

namespace {

struct TokenizerArgs {
  TokenizerTrainOptions train;
  std::string model, text;
};

struct GenerateArgs {
  std::string model, text;
  int64_t max_new_tokens = 32;
};

}  // namespace

Command add_tokenizer(CLI::App& app) {
  auto args = std::make_shared<TokenizerArgs>();
  auto* sub = app.add_subcommand("tokenizer", "Train a SentencePiece tokenizer with T5's conventions, or encode text");
  sub->require_subcommand(1);
  auto* train = sub->add_subcommand("train", "Train spiece.model (+ tokenizer_config.json) from plain-text files");
  train->add_option("--input", args->train.inputs, "Plain-text files, one document per line")->required()->check(CLI::ExistingFile);
  train->add_option("--vocab-size", args->train.vocab_size, "Total vocabulary, sentinels included")->required();
  train->add_option("--sentinels", args->train.num_sentinels, "Sentinel ids <extra_id_N> at the top of the vocabulary");
  train->add_option("--model-type", args->train.model_type, "SentencePiece model type")->check(CLI::IsMember({"unigram", "bpe"}));
  train->add_option("--max-sentences", args->train.max_sentences, "Sentences sampled for training");
  train->add_option("--output", args->train.output_dir, "Output directory")->required();
  auto* encode = sub->add_subcommand("encode", "Print the ids of a text (with </s>, like Hugging Face's T5 tokenizer)");
  encode->add_option("--model", args->model, "Model directory or .model file")->required();
  encode->add_option("--text", args->text, "Text to encode")->required();
  return {sub, [args, train, encode] {
            if (train->parsed()) {
              train_tokenizer(args->train);
              auto t = Tokenizer::load(args->train.output_dir);
              std::cout << "wrote " << t.model_file() << ": " << t.pieces() << " pieces + " << t.num_sentinels()
                        << " sentinels = " << t.vocab_size() << " ids\n";
            } else if (encode->parsed()) {
              auto ids = Tokenizer::load(args->model).encode(args->text);
              for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
              std::cout << "\n";
            }
          }};
}

Command add_generate(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  auto* sub = app.add_subcommand("generate", "Greedy decoding: text in, text out, with the checkpoint's spiece.model");
  sub->add_option("--model", args->model, "Model directory (with spiece.model)")->required();
  sub->add_option("--text", args->text, "Input text")->required();
  sub->add_option("--max-new-tokens", args->max_new_tokens, "Tokens to generate at most")->check(CLI::PositiveNumber);
  return {sub, [args] {
            auto tokenizer = Tokenizer::load(args->model);
            auto model = load_model(args->model);
            check_vocabulary(model->config(), tokenizer, args->model);
            auto ids = tokenizer.encode(args->text);
            auto input = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kLong).unsqueeze(0);
            GenerateOptions opts;
            opts.max_new_tokens = args->max_new_tokens;
            auto out = greedy_generate(model, input, {}, opts);
            auto row = out[0];
            std::vector<int64_t> gen(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
            std::cout << tokenizer.decode(gen) << "\n";
          }};
}

}  // namespace distill::cli
