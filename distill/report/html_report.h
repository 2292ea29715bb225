// The report people look at: DIR/report.html, one self-contained file (inline SVG, no scripts,
// nothing fetched), and the same plots as DIR/*.svg for report.md to link. Generated from a run's
// report.json or a sweep's sweep.json and the metrics.jsonl of the stages they name, so
// `distill report DIR` regenerates it at any time.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace distill {

struct Figure {
  std::string file;     // "curves.svg", next to report.html
  std::string caption;  // one line saying what it shows
  std::string svg;
};

// The figures of a run (report.json) or a sweep (sweep.json with its variants' report.json).
std::vector<Figure> run_figures(const nlohmann::json& report);
std::vector<Figure> sweep_figures(const nlohmann::json& sweep);

// Writes DIR/report.html and the figures' SVG files, and returns the Markdown section that links
// them. DIR holds sweep.json (a sweep) or report.json (a run); throws InputError when neither.
std::string write_html_report(const std::string& dir);

// `distill report DIR`: report.md (or sweep.md) and report.html with its plots written again.
void regenerate_report(const std::string& dir);

// The paper's Table 7 (Fedus et al. 2022): compression (%) and quality gain preserved (%).
const std::vector<std::pair<double, double>>& paper_table7();

}  // namespace distill
