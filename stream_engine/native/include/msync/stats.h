// stream_engine/native/include/msync/stats.h
//
// Percentiles of per-step timings, computed like numpy.percentile's default (linear interpolation between
// the two nearest ranks), so C++ and Python summaries of the same samples agree.
#ifndef MSYNC_STATS_H_
#define MSYNC_STATS_H_

#include <algorithm>
#include <cmath>
#include <vector>

namespace msync {

struct TimingSummary {
  size_t n = 0;
  double mean = 0, min = 0, p50 = 0, p95 = 0, p99 = 0, max = 0;  // same unit as the samples
};

/// q in [0, 100] of already sorted values; 0 for an empty list.
inline double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0.0;
  double pos = q / 100.0 * static_cast<double>(sorted.size() - 1);
  size_t lo = static_cast<size_t>(std::floor(pos));
  size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - static_cast<double>(lo));
}

inline TimingSummary Summarise(std::vector<double> samples) {
  TimingSummary s;
  s.n = samples.size();
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  double total = 0;
  for (double v : samples) total += v;
  s.mean = total / static_cast<double>(samples.size());
  s.min = samples.front();
  s.max = samples.back();
  s.p50 = Percentile(samples, 50);
  s.p95 = Percentile(samples, 95);
  s.p99 = Percentile(samples, 99);
  return s;
}

}  // namespace msync

#endif  // MSYNC_STATS_H_
