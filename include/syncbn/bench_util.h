// Small helpers for measurements: wall-clock timing, medians, atomic file writes.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace syncbn {

inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median of the samples (the vector is reordered).
double median(std::vector<double>& samples);

// Writes `text` to `path` through a temporary file in the same directory, fsync, then rename: readers
// see the old file or the new one, never a half-written one.
void write_file_atomic(const std::string& path, const std::string& text);

}  // namespace syncbn
