// Self-contained SVG plots (no scripts, no fonts to fetch): line and scatter plots with 95%
// interval bars, bar charts with intervals and reference marks, and heatmaps. Every drawn datum
// carries a class (point, bar, cell) so tests and readers can count what was drawn.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace distill::svg {

struct Axes {
  std::string title;
  std::string x_label, y_label;
  bool log_x = false;               // x on a log10 scale (values <= 0 are left out)
};

struct Series {
  std::string name;                 // legend entry
  std::vector<double> x, y;         // non-finite pairs are left out
  std::vector<double> lo, hi;       // optional: a 95% interval bar at each point
  bool line = true;                 // join the points with a line
  bool points = false;              // a marker (class "point") at each point
  bool hollow = false;              // open markers: reference data, not measured here
};

// x-y plot of the series, axes fitted to all of them.
std::string xy_plot(const Axes& axes, const std::vector<Series>& series);

struct Bar {
  std::string label;
  double value = 0;                 // NaN: drawn as "undefined" with no bar
  std::optional<double> lo, hi;     // its 95% interval
  std::optional<double> reference;  // a mark for a reference value (the paper's)
};

// Vertical bars (class "bar"), one per entry, with interval whiskers and reference marks
// (class "reference") named `reference_label` in the legend.
std::string bar_plot(const Axes& axes, const std::vector<Bar>& bars, const std::string& reference_label);

// values[r][c] as coloured cells (class "cell"), white (0) to dark blue (the maximum), each
// labelled with its value.
std::string heatmap(const Axes& axes, const std::vector<std::string>& rows, const std::vector<std::string>& columns,
                    const std::vector<std::vector<double>>& values);

// Text made safe for XML (and HTML) content and attribute values.
std::string escape(const std::string& text);

}  // namespace distill::svg
