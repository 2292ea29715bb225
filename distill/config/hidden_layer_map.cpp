#include "distill/config/hidden_layer_map.h"

#include "models/errors.h"

namespace distill {

std::vector<HiddenLayerPair> parse_hidden_layer_map(const std::vector<std::string>& spec, int64_t encoder_layers,
                                                    int64_t decoder_layers, const std::string& key) {
  std::vector<HiddenLayerPair> pairs;
  if (spec.empty()) {
    for (int64_t i = 1; i <= encoder_layers; ++i) pairs.push_back({false, i, i});
    for (int64_t i = 1; i <= decoder_layers; ++i) pairs.push_back({true, i, i});
    return pairs;
  }
  // "encoder.3" -> (decoder?, 3); false when it is not of that form or out of range.
  const auto side = [&](const std::string& s, bool& decoder, int64_t& index) {
    const auto dot = s.find('.');
    if (dot == std::string::npos) return false;
    const std::string stack = s.substr(0, dot), num = s.substr(dot + 1);
    if ((stack != "encoder" && stack != "decoder") || num.empty() || num.size() > 4 ||
        num.find_first_not_of("0123456789") != std::string::npos)
      return false;
    decoder = stack == "decoder";
    index = std::stoll(num);
    return index <= (decoder ? decoder_layers : encoder_layers);
  };
  for (const auto& entry : spec) {
    const auto colon = entry.find(':');
    const std::string s = entry.substr(0, colon), t = colon == std::string::npos ? s : entry.substr(colon + 1);
    HiddenLayerPair p;
    bool t_decoder = false;
    if (!side(s, p.decoder, p.student) || !side(t, t_decoder, p.teacher) || t_decoder != p.decoder) {
      throw ConfigError(key + ": \"" + entry + "\" is not a layer pair; expected encoder.I or decoder.I (0 = embeddings, " +
                        std::to_string(encoder_layers) + " / " + std::to_string(decoder_layers) +
                        " = the encoder's / decoder's final output), or student:teacher within one stack");
    }
    pairs.push_back(p);
  }
  return pairs;
}

}  // namespace distill
