#include "distill/evaluation/stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "models/errors.h"

namespace distill::stats {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Continued fraction of the regularised incomplete beta function (modified Lentz).
double beta_fraction(double a, double b, double x) {
  constexpr double tiny = 1e-300, eps = 1e-15;
  const double qab = a + b, qap = a + 1, qam = a - 1;
  double c = 1, d = 1 - qab * x / qap;
  d = 1 / (std::abs(d) < tiny ? tiny : d);
  double h = d;
  for (int m = 1; m <= 500; ++m) {
    const double m2 = 2.0 * m;
    double aa = m * (b - m) * x / ((qam + m2) * (a + m2));
    d = 1 + aa * d;
    c = 1 + aa / c;
    d = 1 / (std::abs(d) < tiny ? tiny : d);
    c = std::abs(c) < tiny ? tiny : c;
    h *= d * c;
    aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
    d = 1 + aa * d;
    c = 1 + aa / c;
    d = 1 / (std::abs(d) < tiny ? tiny : d);
    c = std::abs(c) < tiny ? tiny : c;
    const double step = d * c;
    h *= step;
    if (std::abs(step - 1) < eps) break;
  }
  return h;
}

// I_x(a, b).
double incomplete_beta(double a, double b, double x) {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const double front = std::exp(std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x));
  if (x < (a + 1) / (a + b + 2)) return front * beta_fraction(a, b, x) / a;
  return 1 - front * beta_fraction(b, a, 1 - x) / b;
}

double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

double student_t_cdf(double t, double dof) {
  if (!std::isfinite(dof) || dof > 1e7) return normal_cdf(t);
  const double tail = 0.5 * incomplete_beta(dof / 2, 0.5, dof / (dof + t * t));
  return t >= 0 ? 1 - tail : tail;
}

}  // namespace

double mean(const std::vector<double>& x) {
  if (x.empty()) return 0;
  return std::accumulate(x.begin(), x.end(), 0.0) / static_cast<double>(x.size());
}

double covariance(const std::vector<double>& x, const std::vector<double>& y) {
  const size_t n = std::min(x.size(), y.size());
  if (n < 2) return 0;
  const double mx = mean(x), my = mean(y);
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += (x[i] - mx) * (y[i] - my);
  return s / static_cast<double>(n - 1);
}

double sd(const std::vector<double>& x) { return std::sqrt(std::max(0.0, covariance(x, x))); }

double student_t_quantile(double p, double dof) {
  if (!(p > 0 && p < 1) || !(dof > 0)) throw Error("student_t_quantile: need p in (0, 1) and dof > 0");
  if (p == 0.5) return 0;
  if (p < 0.5) return -student_t_quantile(1 - p, dof);
  double lo = 0, hi = 1;
  while (student_t_cdf(hi, dof) < p && hi < 1e12) hi *= 2;
  for (int i = 0; i < 200 && hi - lo > 1e-12 * hi; ++i) {
    const double mid = 0.5 * (lo + hi);
    (student_t_cdf(mid, dof) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

double welch_dof(const std::vector<double>& variances, const std::vector<double>& dofs) {
  double total = 0, denominator = 0;
  for (size_t i = 0; i < variances.size(); ++i) {
    total += variances[i];
    if (variances[i] > 0 && std::isfinite(dofs[i])) denominator += variances[i] * variances[i] / dofs[i];
  }
  if (total <= 0 || denominator <= 0) return kInf;
  return total * total / denominator;
}

Estimate estimate(const std::vector<double>& values, double sample_se, double sample_dof) {
  Estimate e;
  e.n = static_cast<int64_t>(values.size());
  e.mean = mean(values);
  e.sd = sd(values);
  const double seed_var = e.n >= 2 ? e.sd * e.sd / static_cast<double>(e.n) : 0.0;
  const double sample_var = sample_se * sample_se;
  const double var = seed_var + sample_var;
  e.se = std::sqrt(var);
  e.dof = welch_dof({seed_var, sample_var}, {static_cast<double>(e.n - 1), sample_dof});
  const double t = var > 0 ? student_t_quantile(0.975, e.dof) : 0.0;
  e.lo = e.mean - t * e.se;
  e.hi = e.mean + t * e.se;
  return e;
}

std::optional<Interval> fieller(double a, double d, double var_a, double var_d, double cov, double t) {
  const double t2 = t * t;
  const double A = d * d - t2 * var_d, B = a * d - t2 * cov, C = a * a - t2 * var_a;
  if (!(A > 0)) return std::nullopt;
  const double root = std::sqrt(std::max(0.0, B * B - A * C));
  return Interval{(B - root) / A, (B + root) / A};
}

double BatchSums::ratio() const {
  const double c = std::accumulate(count.begin(), count.end(), 0.0);
  return c > 0 ? std::accumulate(value.begin(), value.end(), 0.0) / c : 0.0;
}

double ratio_covariance(const BatchSums& x, const BatchSums& y) {
  const size_t n = std::min(x.value.size(), y.value.size());
  if (n < 2) return 0;
  const double rx = x.ratio(), ry = y.ratio();
  const double total = std::accumulate(x.count.begin(), x.count.begin() + static_cast<std::ptrdiff_t>(n), 0.0);
  if (total <= 0) return 0;
  double s = 0;
  for (size_t j = 0; j < n; ++j) s += (x.value[j] - rx * x.count[j]) * (y.value[j] - ry * y.count[j]);
  return static_cast<double>(n) / static_cast<double>(n - 1) * s / (total * total);
}

double ratio_se(const BatchSums& x) { return std::sqrt(std::max(0.0, ratio_covariance(x, x))); }

BatchSums combine(const std::vector<const BatchSums*>& x, const std::vector<double>& w) {
  BatchSums out;
  if (x.empty()) return out;
  out.count = x[0]->count;
  out.value.assign(out.count.size(), 0.0);
  for (size_t i = 0; i < x.size(); ++i) {
    if (x[i]->value.size() != out.value.size()) throw Error("stats::combine: evaluations over different batches");
    for (size_t j = 0; j < out.value.size(); ++j) out.value[j] += w[i] * x[i]->value[j];
  }
  return out;
}

std::vector<std::pair<double, double>> bootstrap_sums(const std::vector<double>& x, const std::vector<double>& y,
                                                      int64_t resamples, uint64_t seed) {
  std::vector<std::pair<double, double>> out;
  const size_t n = std::min(x.size(), y.size());
  if (n == 0) return out;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, n - 1);
  out.reserve(static_cast<size_t>(std::max<int64_t>(0, resamples)));
  for (int64_t r = 0; r < resamples; ++r) {
    double sx = 0, sy = 0;
    for (size_t i = 0; i < n; ++i) {
      const size_t j = pick(rng);
      sx += x[j];
      sy += y[j];
    }
    out.emplace_back(sx, sy);
  }
  return out;
}

double percentile(const std::vector<double>& sorted, double q) {
  const double pos = q * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (pos - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

}  // namespace distill::stats
