// Progress display of the `cpc` CLI for long operations (snapshot, restore,
// migration, the audit digest): on a terminal a one-line bar redrawn at most
// ~10 times per second (bytes done/total, rate, ETA, elapsed); otherwise a few
// plain lines (every 25 %). Output goes to the given stream (stderr in the
// CLI). Not synchronised: call from one thread at a time (libcpc's progress
// callbacks are serialised; the migration's run on an internal thread, and
// the CLI touches the display again only once the call returned).
#ifndef CPC_TOOLS_PROGRESS_H_
#define CPC_TOOLS_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace cpc_cli {

enum class ProgressMode { kAuto, kBar, kLines, kOff };

// "1.50 GiB", "512 MiB", "4.0 KiB", "17 B".
std::string HumanBytes(uint64_t bytes);
// "2.31 GB/s", "812 MB/s" (decimal units, as throughput usually is).
std::string HumanRate(double bytes_per_s);
// "0:07", "1:02:03"; "--:--" for a negative or unknown duration.
std::string HumanClock(double seconds);
// "1.234 s", "87.5 ms".
std::string HumanSeconds(double seconds);

class Progress {
 public:
  // `label` names the operation ("snapshot", "restore", "digest").
  // kAuto: a bar if `out` is a terminal, plain lines otherwise.
  Progress(std::string label, ProgressMode mode, std::FILE* out = stderr);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Reports `done` of `total` bytes (total 0 = unknown yet). Cheap when
  // throttled; safe to call very often.
  void Update(uint64_t done, uint64_t total);
  // Draws the final state (100 % if `done` == `total`) and ends the line.
  void Finish(uint64_t done, uint64_t total);
  // Text appended to every following line ("round 3, dirty 12 MB/s"); empty
  // for none. Takes effect at the next Update / Finish.
  void Detail(std::string text);
  // Ends a bar line without a final 100 % (the operation failed).
  void Abandon();
  // Shows what the operation is doing before bytes move ("launching a fresh
  // CVM"): the bar line's text until the next update, or one plain line.
  void Phase(std::string_view text);
  // Ends a bar line drawn so far (if any) so that other output can follow on
  // the terminal; the next update draws on a new line.
  void Break();
  // Restarts the clock that rate, ETA and elapsed are measured from.
  void Restart();
  // Whether this draws a bar (redrawn in place) rather than plain lines.
  bool bar() const { return bar_ && !off_; }

 private:
  using Clock = std::chrono::steady_clock;
  std::string Line(uint64_t done, uint64_t total, bool final) const;
  void Draw(const std::string& line, bool final);

  std::string label_;
  std::string detail_;
  std::FILE* out_;
  bool bar_ = false;
  bool off_ = false;
  bool open_line_ = false;  // a bar line is on screen without its newline
  bool finished_ = false;
  Clock::time_point start_;
  Clock::time_point last_draw_{};
  int next_quarter_ = 1;  // plain lines: next 25 % step to report
};

}  // namespace cpc_cli

#endif  // CPC_TOOLS_PROGRESS_H_
