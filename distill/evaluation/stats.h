// The statistics behind the report's intervals: Student's t quantiles, a mean's 95% interval
// from two independent sources of error (seeds and the held-out sample), and Fieller's interval
// for a ratio of such means (gain preserved = (student - baseline) / (teacher - baseline)).
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace distill::stats {

double mean(const std::vector<double>& x);
// Sample standard deviation (n - 1); 0 for fewer than two values.
double sd(const std::vector<double>& x);
// Sample covariance (n - 1); 0 for fewer than two pairs.
double covariance(const std::vector<double>& x, const std::vector<double>& y);

// The p-quantile of Student's t with `dof` degrees of freedom (fractional allowed; infinite or
// huge dof gives the normal's). p in (0, 1), dof > 0.
double student_t_quantile(double p, double dof);

// Welch-Satterthwaite: the degrees of freedom of a variance that is a sum of independently
// estimated parts, each given with its own degrees of freedom. Infinite when no part has error.
double welch_dof(const std::vector<double>& variances, const std::vector<double>& dofs);

// A mean with its uncertainty: the spread of `values` across seeds (their standard error of the
// mean, with n - 1 degrees of freedom) and a second, independent standard error `sample_se` with
// `sample_dof` degrees of freedom (the held-out sample's). The 95% interval is mean +- t * se
// with se the root of the summed variances and t from Welch-Satterthwaite's degrees of freedom.
struct Estimate {
  double mean = 0;
  double sd = 0;          // across seeds; 0 for one seed
  double se = 0;          // standard error of the mean, both sources
  double dof = 0;         // degrees of freedom of se
  double lo = 0, hi = 0;  // 95% interval; lo == hi == mean when nothing is uncertain
  int64_t n = 0;          // seeds
};
Estimate estimate(const std::vector<double>& values, double sample_se, double sample_dof);

// Fieller's 95% interval for the ratio a / d of two estimates with variances var_a, var_d and
// covariance cov, using the t quantile `t`. Bounded only when d differs from zero beyond its own
// interval (d^2 > t^2 var_d); otherwise the ratio is undefined at this confidence (nullopt).
struct Interval {
  double lo = 0, hi = 0;
};
std::optional<Interval> fieller(double a, double d, double var_a, double var_d, double cov, double t);

// Per-batch sums for a ratio estimate sum(value) / sum(count) over evaluation batches (a model's
// mean NLL per token is sum(batch NLL) / sum(batch tokens)). The standard error and covariance of
// such ratios over the batches come from the linearised residuals value_j - ratio * count_j.
struct BatchSums {
  std::vector<double> value;  // per batch
  std::vector<double> count;  // per batch (the same for every model evaluated on the same batches)
  double ratio() const;
};
// Standard error of x.ratio() as a mean over the batches (0 for fewer than two batches).
double ratio_se(const BatchSums& x);
// Covariance of x.ratio() and y.ratio(), both over the same batches.
double ratio_covariance(const BatchSums& x, const BatchSums& y);
// sum_i w_i * x_i batch by batch (the x_i share their counts).
BatchSums combine(const std::vector<const BatchSums*>& x, const std::vector<double>& w);

// For each of `resamples` bootstrap resamples of the items (drawn with replacement, seeded): the
// sums of x and of y over the resample. x and y have one value per item.
std::vector<std::pair<double, double>> bootstrap_sums(const std::vector<double>& x, const std::vector<double>& y,
                                                      int64_t resamples, uint64_t seed);

// The q-quantile of sorted values, interpolating linearly between neighbours (q in [0, 1]; not empty).
double percentile(const std::vector<double>& sorted, double q);

}  // namespace distill::stats
