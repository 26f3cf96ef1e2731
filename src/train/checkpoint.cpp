// Checkpoint file format (little-endian, as written by the machines we run on):
//   "SBNCKPT1"
//   sections: u32 name length, name, u64 payload length, payload
//     signature, fingerprint, config (text); position (3 × i64); then TrainModel::state() in its order
//     (params, momentum, buffer:<name>, ...: raw host bytes)
//   last section "checksum": FNV-1a 64 of every byte before it.
#include "syncbn/checkpoint.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "syncbn/app.h"
#include "syncbn/bench_util.h"
#include "syncbn/error.h"

namespace syncbn {
namespace {

constexpr char kMagic[] = "SBNCKPT1";

std::uint64_t fnv1a(const char* p, std::size_t n) {
  std::uint64_t h = 1469598103934665603ull;
  for (std::size_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(p[i]);
    h *= 1099511628211ull;
  }
  return h;
}

void put_section(std::string& out, const std::string& name, const void* data, std::size_t bytes) {
  const auto len = static_cast<std::uint32_t>(name.size());
  const auto size = static_cast<std::uint64_t>(bytes);
  out.append(reinterpret_cast<const char*>(&len), sizeof len);
  out.append(name);
  out.append(reinterpret_cast<const char*>(&size), sizeof size);
  out.append(static_cast<const char*>(data), bytes);
}

// The first ';'-separated item where two signatures differ, for the refusal message.
std::string first_difference(const std::string& a, const std::string& b, char sep) {
  std::stringstream sa(a), sb(b);
  std::string ia, ib;
  while (true) {
    const bool ga = static_cast<bool>(std::getline(sa, ia, sep)), gb = static_cast<bool>(std::getline(sb, ib, sep));
    if (!ga && !gb) return "";
    if (!ga) ia = "(nothing)";
    if (!gb) ib = "(nothing)";
    if (ia != ib) return "checkpoint has " + ia + ", this run has " + ib;
  }
}

// The first non-finite element of a floating-point state array, as "'params' element 12 is nan", or "".
std::string first_nonfinite(const StateArray& a) {
  auto scan = [&](const auto* v, std::size_t n) -> std::string {
    for (std::size_t i = 0; i < n; ++i)
      if (!std::isfinite(v[i]))
        return "'" + a.name + "' element " + std::to_string(i) + " is " + (std::isnan(v[i]) ? "nan" : "inf");
    return "";
  };
  switch (a.type) {
    case StateType::kF32: return scan(static_cast<const float*>(a.data), a.bytes / sizeof(float));
    case StateType::kF64: return scan(static_cast<const double*>(a.data), a.bytes / sizeof(double));
    case StateType::kI64: return "";
  }
  return "";
}

}  // namespace

void save_checkpoint(const std::string& path, TrainModel& model, const TrainPosition& pos, const CheckpointMeta& meta) {
  // A checkpoint is what --resume latest trusts: never one that holds NaN/Inf.
  for (const StateArray& a : model.state()) {
    const std::string bad = first_nonfinite(a);
    SBN_CHECK(bad.empty(), "checkpoint " + path + " not written: the state at step " + std::to_string(pos.step) +
                               " is not finite (" + bad + ")");
  }
  std::string out(kMagic, 8);
  put_section(out, "signature", meta.signature.data(), meta.signature.size());
  put_section(out, "fingerprint", meta.fingerprint.data(), meta.fingerprint.size());
  put_section(out, "config", meta.config_ini.data(), meta.config_ini.size());
  const std::int64_t p[3] = {pos.step, pos.epoch, pos.step_in_epoch};
  put_section(out, "position", p, sizeof p);
  for (const StateArray& a : model.state()) put_section(out, a.name, a.data, a.bytes);
  const std::uint64_t sum = fnv1a(out.data(), out.size());
  put_section(out, "checksum", &sum, sizeof sum);
  write_file_atomic(path, out);
}

TrainPosition load_checkpoint(const std::string& path, Communicator& comm, TrainModel& model,
                              const CheckpointMeta& expected) {
  std::string bytes;
  run_agreed(comm, "checkpoint.read", [&] {
    std::ifstream in(path, std::ios::binary);
    SBN_CHECK(in.good(), "--resume " + path + ": cannot open the checkpoint (" + std::strerror(errno) + ")");
    std::ostringstream ss;
    ss << in.rdbuf();
    bytes = ss.str();
    SBN_CHECK(!in.bad(), "--resume " + path + ": read error");
  });
  if (!comm.all_equal(fnv1a(bytes.data(), bytes.size()) ^ bytes.size(), "checkpoint.hash"))
    throw AgreedError("--resume " + path +
                      ": the ranks read different bytes (is the file being rewritten, or not the same on every node?)");
  TrainPosition pos;
  run_agreed(comm, "checkpoint.parse", [&] {
    const std::string who = "--resume " + path;
    SBN_CHECK(bytes.size() >= 8 && std::memcmp(bytes.data(), kMagic, 8) == 0,
              who + ": not a syncbn checkpoint (bad magic)");
    std::map<std::string, std::pair<std::size_t, std::size_t>> sections;  // name → (offset, size)
    std::size_t at = 8;
    bool checked = false;
    while (at < bytes.size()) {
      std::uint32_t len = 0;
      std::uint64_t size = 0;
      SBN_CHECK(at + sizeof len <= bytes.size(), who + ": truncated (section header)");
      std::memcpy(&len, bytes.data() + at, sizeof len);
      SBN_CHECK(len < 4096 && at + sizeof len + len + sizeof size <= bytes.size(), who + ": truncated or corrupted");
      const std::string name(bytes.data() + at + sizeof len, len);
      std::memcpy(&size, bytes.data() + at + sizeof len + len, sizeof size);
      const std::size_t payload = at + sizeof len + len + sizeof size;
      SBN_CHECK(size <= bytes.size() - payload, who + ": truncated (section '" + name + "')");
      if (name == "checksum") {
        std::uint64_t sum = 0;
        SBN_CHECK(size == sizeof sum, who + ": corrupted checksum section");
        std::memcpy(&sum, bytes.data() + payload, sizeof sum);
        SBN_CHECK(sum == fnv1a(bytes.data(), at), who + ": checksum mismatch (the file is corrupted)");
        checked = true;
        break;
      }
      sections[name] = {payload, static_cast<std::size_t>(size)};
      at = payload + size;
    }
    SBN_CHECK(checked, who + ": truncated (no checksum)");
    auto text = [&](const char* name) {
      auto it = sections.find(name);
      SBN_CHECK(it != sections.end(), who + ": missing section '" + name + "'");
      return std::string(bytes.data() + it->second.first, it->second.second);
    };
    const std::string sig = text("signature");
    SBN_CHECK(sig == expected.signature,
              who + ": written for another model (" + first_difference(sig, expected.signature, ';') + ")");
    const std::string fp = text("fingerprint");
    SBN_CHECK(fp == expected.fingerprint, who + ": written with another configuration (" +
                                               first_difference(fp, expected.fingerprint, '\n') +
                                               "); only run-length, output and runtime flags may change on resume");
    auto blob = [&](const std::string& name, void* dst, std::size_t n) {
      auto it = sections.find(name);
      SBN_CHECK(it != sections.end(), who + ": missing section '" + name + "'");
      SBN_CHECK(it->second.second == n, who + ": section '" + name + "' has " + std::to_string(it->second.second) +
                                            " bytes, expected " + std::to_string(n));
      std::memcpy(dst, bytes.data() + it->second.first, n);
    };
    std::int64_t p[3];
    blob("position", p, sizeof p);
    pos = {p[0], p[1], p[2]};
    for (const StateArray& a : model.state()) {
      blob(a.name, a.data, a.bytes);
      const std::string bad = first_nonfinite(a);
      SBN_CHECK(bad.empty(), who + ": holds non-finite values (" + bad + "); resume from an earlier checkpoint");
    }
  });
  return pos;
}

std::string checkpoint_path(const std::string& run_dir, std::int64_t step) {
  char name[64];
  std::snprintf(name, sizeof name, "checkpoint-%08lld.ckpt", static_cast<long long>(step));
  return (std::filesystem::path(run_dir) / name).string();
}

std::string latest_checkpoint(const std::string& run_dir) {
  // The highest step, not the last name in text order ("checkpoint-100000000" sorts before
  // "checkpoint-99999999"); only regular files named checkpoint-<digits>.ckpt count.
  std::string best;
  long long best_step = -1;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(run_dir, ec)) {
    const std::string n = e.path().filename().string();
    constexpr std::size_t kPrefix = 11, kSuffix = 5;  // "checkpoint-", ".ckpt"
    if (n.size() <= kPrefix + kSuffix || n.rfind("checkpoint-", 0) != 0 || n.substr(n.size() - kSuffix) != ".ckpt") continue;
    const std::string digits = n.substr(kPrefix, n.size() - kPrefix - kSuffix);
    if (digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    if (!e.is_regular_file(ec)) continue;
    const long long step = std::stoll(digits);
    if (step > best_step) {
      best_step = step;
      best = n;
    }
  }
  return best.empty() ? "" : (std::filesystem::path(run_dir) / best).string();
}

}  // namespace syncbn
