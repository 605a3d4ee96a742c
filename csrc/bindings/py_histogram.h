// Binding-private: a core HistogramSnapshot as the Python dict every stats() histogram is
// (Model.stats(), StageHistogram.snapshot(), NativeFrontend.stats()'s stages), shared by
// module.cpp and native_frontend.cpp so the shape is defined once.
#pragma once

#include <pybind11/pybind11.h>

#include "inferline/stats.h"

namespace inferline_py {

// {"count", "mean", "max", "p50", "p90", "p99", "p999", "sum", "buckets"}, in microseconds.
inline pybind11::dict HistogramToPy(const inferline::HistogramSnapshot& h) {
  namespace py = pybind11;
  py::dict d;
  d["count"] = h.count;
  d["mean"] = h.Mean();
  d["max"] = h.max;
  d["p50"] = h.Percentile(0.50);
  d["p90"] = h.Percentile(0.90);
  d["p99"] = h.Percentile(0.99);
  d["p999"] = h.Percentile(0.999);
  d["sum"] = h.sum;
  // The non-empty buckets as (largest value in the bucket, count), in order: enough to re-bucket
  // exactly at any of the core's bucket bounds (Prometheus exposition reads it at scrape time).
  py::list buckets;
  for (size_t i = 0; i < h.buckets.size(); ++i) {
    if (h.buckets[i] != 0) {
      buckets.append(py::make_tuple(inferline::LatencyHistogram::BucketUpper(i), h.buckets[i]));
    }
  }
  d["buckets"] = buckets;
  return d;
}

}  // namespace inferline_py
