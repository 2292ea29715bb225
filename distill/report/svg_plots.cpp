#include "distill/report/svg_plots.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

namespace distill::svg {
namespace {

constexpr double kWidth = 680, kHeight = 420;
constexpr double kLeft = 78, kRight = 24, kTop = 44, kBottom = 64;
const char* const kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                               "#bcbd22", "#17becf"};

const char* color(size_t i) { return kColors[i % (sizeof(kColors) / sizeof(kColors[0]))]; }

std::string num(double v) { return fmt::format("{:.2f}", v); }

// A tick step of 1, 2 or 5 times a power of ten giving about `target` ticks over [lo, hi].
double nice_step(double lo, double hi, int target) {
  const double raw = (hi - lo) / target;
  if (!(raw > 0) || !std::isfinite(raw)) return 1;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * p) return m * p;
  return 10 * p;
}

std::string tick_label(double v, double step) {
  if (std::abs(v) < step * 1e-9) v = 0;
  if (std::abs(v) >= 1e5 || (step < 1e-3 && v != 0)) return fmt::format("{:.3g}", v);
  const int decimals = step >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(step) - 1e-9));
  return fmt::format("{:.{}f}", v, decimals);
}

struct Range {
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
  void add(double v) {
    if (!std::isfinite(v)) return;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  // A range with room around the data (and a width when all values are equal).
  void finish(bool pad = true) {
    if (!std::isfinite(lo)) lo = 0, hi = 1;
    if (hi - lo < 1e-12) {
      lo -= 0.5;
      hi += 0.5;
    } else if (pad) {
      const double m = 0.05 * (hi - lo);
      lo -= m;
      hi += m;
    }
  }
};

std::string header(const Axes& a) {
  std::string s = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0f}\" height=\"{:.0f}\" viewBox=\"0 0 {:.0f} {:.0f}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n",
      kWidth, kHeight, kWidth, kHeight);
  s += fmt::format("<title>{}</title>\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n", escape(a.title));
  s += fmt::format("<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
                   num(kWidth / 2), escape(a.title));
  s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", num(kLeft + (kWidth - kLeft - kRight) / 2),
                   num(kHeight - 14), escape(a.x_label));
  s += fmt::format("<text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{}</text>\n",
                   num(kTop + (kHeight - kTop - kBottom) / 2), num(kTop + (kHeight - kTop - kBottom) / 2), escape(a.y_label));
  return s;
}

// Horizontal grid lines and y tick labels over [lo, hi].
std::string y_axis(double lo, double hi, const std::function<double(double)>& Y) {
  std::string s;
  const double step = nice_step(lo, hi, 6);
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    s += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#e0e0e0\"/>\n", num(kLeft), num(kWidth - kRight),
                     num(Y(v)), num(Y(v)));
    s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", num(kLeft - 6), num(Y(v) + 4), tick_label(v, step));
  }
  s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>\n", num(kLeft), num(kTop),
                   num(kWidth - kLeft - kRight), num(kHeight - kTop - kBottom));
  return s;
}

std::string legend_entry(size_t i, const std::string& name, const std::string& col, bool hollow, bool line) {
  const double x = kWidth - kRight - 230, y = kTop + 14 + 16 * static_cast<double>(i);  // top right: curves fall from the left
  std::string mark = line ? fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"2\"/>", num(x),
                                        num(x + 18), num(y - 4), num(y - 4), col)
                          : fmt::format("<circle cx=\"{}\" cy=\"{}\" r=\"4\" fill=\"{}\" stroke=\"{}\"/>", num(x + 9), num(y - 4),
                                        hollow ? "white" : col, col);
  return mark + fmt::format("<text x=\"{}\" y=\"{}\">{}</text>\n", num(x + 24), num(y), escape(name));
}

}  // namespace

std::string escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default:
        if (static_cast<unsigned char>(c) >= 0x20 || c == '\n' || c == '\t') out += c;  // no control characters in XML
    }
  }
  return out;
}

std::string xy_plot(const Axes& a, const std::vector<Series>& series) {
  const auto tx = [&](double x) { return a.log_x ? (x > 0 ? std::log10(x) : std::nan("")) : x; };
  Range rx, ry;
  for (const auto& s : series) {
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(tx(s.x[i])) || !std::isfinite(s.y[i])) continue;
      rx.add(tx(s.x[i]));
      ry.add(s.y[i]);
      if (i < s.lo.size()) ry.add(s.lo[i]);
      if (i < s.hi.size()) ry.add(s.hi[i]);
    }
  }
  rx.finish();
  ry.finish();
  const double w = kWidth - kLeft - kRight, h = kHeight - kTop - kBottom;
  const auto X = [&](double x) { return kLeft + (tx(x) - rx.lo) / (rx.hi - rx.lo) * w; };
  const auto Y = [&](double y) { return kTop + (ry.hi - y) / (ry.hi - ry.lo) * h; };
  std::string s = header(a) + y_axis(ry.lo, ry.hi, Y);
  // x ticks: decades on a log axis, nice steps otherwise.
  if (a.log_x) {
    for (double d = std::ceil(rx.lo); d <= rx.hi; d += 1) {
      const double px = kLeft + (d - rx.lo) / (rx.hi - rx.lo) * w;
      s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", num(px), num(kHeight - kBottom + 18),
                       fmt::format("{:g}", std::pow(10.0, d)));
    }
  } else {
    const double step = nice_step(rx.lo, rx.hi, 6);
    for (double v = std::ceil(rx.lo / step) * step; v <= rx.hi + step * 1e-9; v += step) {
      s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", num(X(v)), num(kHeight - kBottom + 18),
                       tick_label(v, step));
    }
  }
  for (size_t k = 0; k < series.size(); ++k) {
    const auto& se = series[k];
    const char* col = color(k);
    std::string line;
    s += fmt::format("<g class=\"series\" data-name=\"{}\">\n", escape(se.name));
    for (size_t i = 0; i < se.x.size() && i < se.y.size(); ++i) {
      if (!std::isfinite(tx(se.x[i])) || !std::isfinite(se.y[i])) continue;
      const double px = X(se.x[i]), py = Y(se.y[i]);
      line += (line.empty() ? "" : " ") + num(px) + "," + num(py);
      if (i < se.lo.size() && i < se.hi.size() && std::isfinite(se.lo[i]) && std::isfinite(se.hi[i])) {
        s += fmt::format("<line class=\"interval\" x1=\"{0}\" x2=\"{0}\" y1=\"{1}\" y2=\"{2}\" stroke=\"{3}\"/>\n", num(px),
                         num(Y(se.lo[i])), num(Y(se.hi[i])), col);
      }
      if (se.points) {
        s += fmt::format("<circle class=\"point\" cx=\"{}\" cy=\"{}\" r=\"4\" fill=\"{}\" stroke=\"{}\"/>\n", num(px), num(py),
                         se.hollow ? "white" : col, col);
      }
    }
    if (se.line && !line.empty()) {
      s += fmt::format("<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"/>\n", line, col);
    }
    s += "</g>\n";
    s += legend_entry(k, se.name, col, se.hollow, se.line);
  }
  return s + "</svg>\n";
}

std::string bar_plot(const Axes& a, const std::vector<Bar>& bars, const std::string& reference_label) {
  Range ry;
  ry.add(0);
  bool any_reference = false;
  for (const auto& b : bars) {
    ry.add(b.value);
    if (b.lo) ry.add(*b.lo);
    if (b.hi) ry.add(*b.hi);
    if (b.reference) {
      ry.add(*b.reference);
      any_reference = true;
    }
  }
  ry.finish();
  const double w = kWidth - kLeft - kRight, h = kHeight - kTop - kBottom;
  const auto Y = [&](double y) { return kTop + (ry.hi - y) / (ry.hi - ry.lo) * h; };
  std::string s = header(a) + y_axis(ry.lo, ry.hi, Y);
  const double slot = w / static_cast<double>(std::max<size_t>(1, bars.size())), bw = slot * 0.55;
  for (size_t i = 0; i < bars.size(); ++i) {
    const auto& b = bars[i];
    const double cx = kLeft + slot * (static_cast<double>(i) + 0.5);
    if (std::isfinite(b.value)) {
      const double y0 = Y(0), y1 = Y(b.value);
      s += fmt::format("<rect class=\"bar\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"><title>{}: {:.1f}</title></rect>\n",
                       num(cx - bw / 2), num(std::min(y0, y1)), num(bw), num(std::abs(y1 - y0)), color(0), escape(b.label), b.value);
      if (b.lo && b.hi) {
        s += fmt::format("<path class=\"interval\" d=\"M{0} {1} H{2} M{3} {1} V{4} M{0} {4} H{2}\" stroke=\"black\" fill=\"none\"/>\n",
                         num(cx - 6), num(Y(*b.lo)), num(cx + 6), num(cx), num(Y(*b.hi)));
      }
      s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{:.1f}</text>\n", num(cx + bw / 2 + 2),
                       num(std::min(y1, b.hi ? Y(*b.hi) : y1) - 5), b.value);
    } else {
      s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\">undefined</text>\n", num(cx), num(Y(0) - 6));
    }
    if (b.reference) {
      s += fmt::format("<line class=\"reference\" x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"3\"/>\n",
                       num(cx - bw / 2 - 4), num(cx + bw / 2 + 4), num(Y(*b.reference)), num(Y(*b.reference)), color(1));
    }
    s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{}</text>\n", num(cx),
                     num(kHeight - kBottom + 16 + 13 * static_cast<double>(i % 2)), escape(b.label));
  }
  s += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"black\"/>\n", num(kLeft), num(kWidth - kRight), num(Y(0)),
                   num(Y(0)));
  if (any_reference) {
    const double x = kWidth - kRight - 170, y = kTop + 16;
    s += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
                     num(x), num(x + 18), num(y - 4), num(y - 4), color(1), num(x + 24), num(y), escape(reference_label));
  }
  return s + "</svg>\n";
}

std::string heatmap(const Axes& a, const std::vector<std::string>& rows, const std::vector<std::string>& columns,
                    const std::vector<std::vector<double>>& values) {
  double top = 0;
  for (const auto& r : values)
    for (double v : r)
      if (std::isfinite(v)) top = std::max(top, v);
  const double left = 190, w = kWidth - left - kRight, h = kHeight - kTop - kBottom;
  const double cw = w / static_cast<double>(std::max<size_t>(1, columns.size())),
               ch = h / static_cast<double>(std::max<size_t>(1, rows.size()));
  std::string s = header(a);
  for (size_t r = 0; r < rows.size(); ++r) {
    const double y = kTop + ch * static_cast<double>(r);
    s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"11\">{}</text>\n", num(left - 6), num(y + ch / 2 + 4),
                     escape(rows[r]));
    for (size_t c = 0; c < columns.size(); ++c) {
      const double v = r < values.size() && c < values[r].size() ? values[r][c] : std::nan("");
      const double t = std::isfinite(v) && top > 0 ? v / top : 0;
      // White to #08306b.
      const int R = static_cast<int>(255 - t * (255 - 8)), G = static_cast<int>(255 - t * (255 - 48)),
                B = static_cast<int>(255 - t * (255 - 107));
      const double x = left + cw * static_cast<double>(c);
      s += fmt::format("<rect class=\"cell\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#{:02x}{:02x}{:02x}\" stroke=\"white\"/>\n",
                       num(x), num(y), num(cw), num(ch), R, G, B);
      if (cw >= 26 && ch >= 12 && std::isfinite(v)) {
        s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\" fill=\"{}\">{:.2f}</text>\n", num(x + cw / 2),
                         num(y + ch / 2 + 4), t > 0.5 ? "white" : "black", v);
      }
    }
  }
  for (size_t c = 0; c < columns.size(); ++c) {
    s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{}</text>\n",
                     num(left + cw * (static_cast<double>(c) + 0.5)), num(kHeight - kBottom + 16), escape(columns[c]));
  }
  return s + "</svg>\n";
}

}  // namespace distill::svg
