#include "progress.h"

#include <algorithm>
#include <cmath>
#include <unistd.h>
#include <utility>

#include <fmt/format.h>

namespace cpc_cli {

std::string HumanBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  if (u == 0) return fmt::format("{} B", bytes);
  return fmt::format("{:.{}f} {}", v, v < 10 ? 2 : (v < 100 ? 1 : 0),
                     kUnits[u]);
}

std::string HumanRate(double bytes_per_s) {
  if (!(bytes_per_s > 0) || !std::isfinite(bytes_per_s)) return "-- MB/s";
  if (bytes_per_s >= 1e9) return fmt::format("{:.2f} GB/s", bytes_per_s / 1e9);
  if (bytes_per_s >= 1e6) return fmt::format("{:.0f} MB/s", bytes_per_s / 1e6);
  return fmt::format("{:.0f} kB/s", bytes_per_s / 1e3);
}

std::string HumanClock(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds) || seconds > 360000)
    return "--:--";
  const auto s = static_cast<uint64_t>(std::llround(seconds));
  if (s >= 3600)
    return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
  return fmt::format("{}:{:02}", s / 60, s % 60);
}

std::string HumanSeconds(double seconds) {
  if (seconds < 1) return fmt::format("{:.1f} ms", seconds * 1e3);
  return fmt::format("{:.3f} s", seconds);
}

Progress::Progress(std::string label, ProgressMode mode, std::FILE* out)
    : label_(std::move(label)), out_(out), start_(Clock::now()) {
  switch (mode) {
    case ProgressMode::kAuto:
      bar_ = ::isatty(::fileno(out_)) == 1;
      break;
    case ProgressMode::kBar:
      bar_ = true;
      break;
    case ProgressMode::kLines:
      break;
    case ProgressMode::kOff:
      off_ = true;
      break;
  }
}

Progress::~Progress() { Abandon(); }

std::string Progress::Line(uint64_t done, uint64_t total, bool final) const {
  const double elapsed =
      std::chrono::duration<double>(Clock::now() - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0;
  const double frac =
      total > 0 ? std::min(1.0, static_cast<double>(done) / total) : 0;
  std::string eta = "--:--";
  if (total > 0 && rate > 0 && done <= total)
    eta = HumanClock(static_cast<double>(total - done) / rate);
  std::string line = label_;
  if (bar_) {
    constexpr int kWidth = 24;
    const int fill = static_cast<int>(frac * kWidth);
    line +=
        " [" + std::string(fill, '#') + std::string(kWidth - fill, '.') + "]";
  }
  line += fmt::format(" {:3.0f}%  {} / {}  {}", frac * 100, HumanBytes(done),
                      total > 0 ? HumanBytes(total) : "?", HumanRate(rate));
  if (!final) line += "  ETA " + eta;
  line += "  elapsed " + HumanClock(elapsed);
  if (!detail_.empty()) line += "  " + detail_;
  return line;
}

void Progress::Draw(const std::string& line, bool final) {
  if (bar_) {
    // \r back to the start, \x1b[K clears what a longer line left behind.
    fmt::print(out_, "\r{}\x1b[K{}", line, final ? "\n" : "");
    open_line_ = !final;
  } else {
    fmt::print(out_, "{}\n", line);
  }
  std::fflush(out_);
}

void Progress::Update(uint64_t done, uint64_t total) {
  if (off_ || finished_) return;
  const auto now = Clock::now();
  if (bar_) {
    if (now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    Draw(Line(done, total, false), false);
    return;
  }
  // Plain lines: one per 25 % step crossed (not the 100 % one: Finish).
  if (total == 0) return;
  int quarter = static_cast<int>(4 * static_cast<double>(done) / total);
  if (quarter >= 4 || quarter < next_quarter_) return;
  next_quarter_ = quarter + 1;
  Draw(Line(done, total, false), false);
}

void Progress::Finish(uint64_t done, uint64_t total) {
  if (off_ || finished_) return;
  finished_ = true;
  Draw(Line(done, total, true), true);
}

void Progress::Detail(std::string text) { detail_ = std::move(text); }

void Progress::Phase(std::string_view text) {
  if (off_ || finished_) return;
  Draw(fmt::format("{} {}", label_, text), false);
}

void Progress::Restart() {
  start_ = Clock::now();
  last_draw_ = {};
}

void Progress::Break() {
  if (open_line_) {
    fmt::print(out_, "\n");
    std::fflush(out_);
    open_line_ = false;
  }
}

void Progress::Abandon() {
  if (off_ || finished_) return;
  finished_ = true;
  if (open_line_) {
    fmt::print(out_, "\n");
    std::fflush(out_);
    open_line_ = false;
  }
}

}  // namespace cpc_cli
