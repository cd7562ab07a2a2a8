#include "transport/tcp.h"

#include <arpa/inet.h>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <netinet/in.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <catch2/catch.hpp>

#include <cpc/status.h>

#include "test_util.h"

using cpc::Clock;
using cpc::Code;
using cpc::net::Connection;
using cpc::net::Endpoint;
using cpc::net::Listener;
using namespace std::chrono_literals;

namespace {

struct Pair {
  std::unique_ptr<Listener> listener;
  std::unique_ptr<Connection> client;
  std::unique_ptr<Connection> server;
};

Pair MakePair() {
  Pair p;
  auto l = Listener::Listen({"127.0.0.1", 0});
  REQUIRE_OK(l);
  p.listener = std::move(l).value();
  auto c = Connection::Connect(p.listener->local(), 2s);
  REQUIRE_OK(c);
  p.client = std::move(c).value();
  auto s = p.listener->Accept(2s);
  REQUIRE_OK(s);
  p.server = std::move(s).value();
  return p;
}

std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 131);
  return v;
}

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

}  // namespace

TEST_CASE("tcp: frames of several sizes round trip (0 to 8 MiB)") {
  Pair p = MakePair();
  const std::vector<size_t> sizes = {0, 1, 7, 4096, (1u << 20) + 3, 8u << 20};
  std::atomic<bool> write_ok{true};
  std::thread writer([&] {
    for (size_t i = 0; i < sizes.size(); ++i) {
      const auto payload = Pattern(sizes[i], static_cast<uint8_t>(i));
      if (!p.client
               ->WriteFrame(static_cast<uint16_t>(100 + i),
                            static_cast<uint16_t>(i), payload, 5s)
               .ok())
        write_ok = false;
    }
  });
  uint64_t total = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    auto f = p.server->ReadFrame(5s);
    REQUIRE_OK(f);
    CHECK(f->header.type == 100 + i);
    CHECK(f->header.flags == i);
    CHECK(f->header.length == sizes[i]);
    CHECK(f->payload == Pattern(sizes[i], static_cast<uint8_t>(i)));
    total += cpc::net::kFrameHeaderBytes + sizes[i];
  }
  writer.join();
  CHECK(write_ok);
  CHECK(p.client->bytes_written() == total);
  CHECK(p.server->bytes_read() == total);
  CHECK(p.client->peer().port == p.listener->local().port);
}

TEST_CASE("tcp: WriteAll gathers three buffers in order") {
  Pair p = MakePair();
  const auto a = Pattern(3, 1), b = Pattern(300000, 2), c = Pattern(5, 3);
  const std::span<const uint8_t> parts[] = {a, {}, b, c};
  cpc::Status written;  // Catch2 assertions only on the main thread
  std::thread writer([&] { written = p.client->WriteAll(parts, 2s); });
  std::vector<uint8_t> got(a.size() + b.size() + c.size());
  REQUIRE_OK(p.server->ReadExact(got, 2s));
  writer.join();
  REQUIRE_OK(written);
  std::vector<uint8_t> want = a;
  want.insert(want.end(), b.begin(), b.end());
  want.insert(want.end(), c.begin(), c.end());
  CHECK(got == want);
  // The header helpers match what WriteFrame puts on the wire.
  const auto raw = cpc::net::EncodeFrameHeader({0x0102, 0x0304, 0x05060708});
  CHECK(raw == std::array<uint8_t, 8>{2, 1, 4, 3, 8, 7, 6, 5});
  const auto h = cpc::net::DecodeFrameHeader(raw);
  CHECK((h.type == 0x0102 && h.flags == 0x0304 && h.length == 0x05060708));
}

TEST_CASE("tcp: ReadExact with no data times out quickly") {
  Pair p = MakePair();
  std::vector<uint8_t> buf(16);
  const auto t0 = Clock::now();
  REQUIRE_CODE(p.server->ReadExact(buf, 50ms), Code::kTimeout);
  const double ms = Ms(Clock::now() - t0);
  CHECK(ms >= 45);
  CHECK(ms < 500);
  REQUIRE_CODE(p.server->ReadFrame(20ms), Code::kTimeout);
  // Still usable afterwards.
  REQUIRE_OK(p.client->WriteFrame(1, 0, buf));
  REQUIRE_OK(p.server->ReadFrame(1s));
}

TEST_CASE("tcp: peer close mid-frame is data loss, at a boundary an IO error") {
  SECTION("mid-payload") {
    Pair p = MakePair();
    const auto raw = cpc::net::EncodeFrameHeader({1, 0, 100});
    const auto part = Pattern(10, 0);
    const std::span<const uint8_t> parts[] = {raw, part};
    REQUIRE_OK(p.client->WriteAll(parts));
    p.client.reset();
    REQUIRE_CODE(p.server->ReadFrame(1s), Code::kDataLoss);
  }
  SECTION("mid-header") {
    Pair p = MakePair();
    const auto part = Pattern(5, 0);
    const std::span<const uint8_t> parts[] = {part};
    REQUIRE_OK(p.client->WriteAll(parts));
    p.client.reset();
    REQUIRE_CODE(p.server->ReadFrameHeader(1s), Code::kDataLoss);
  }
  SECTION("mid-ReadExact") {
    Pair p = MakePair();
    const auto part = Pattern(10, 0);
    const std::span<const uint8_t> parts[] = {part};
    REQUIRE_OK(p.client->WriteAll(parts));
    p.client->CloseWrite();
    std::vector<uint8_t> buf(20);
    REQUIRE_CODE(p.server->ReadExact(buf, 1s), Code::kDataLoss);
  }
  SECTION("at a frame boundary") {
    Pair p = MakePair();
    REQUIRE_OK(p.client->WriteFrame(1, 0, Pattern(10, 0)));
    p.client->CloseWrite();
    REQUIRE_OK(p.server->ReadFrame(1s));
    const auto eof = p.server->ReadFrame(1s);
    REQUIRE_CODE(eof, Code::kIoError);
    CHECK(eof.status().message() == "connection closed by peer");
    // Half-close: the other direction still works.
    REQUIRE_OK(p.server->WriteFrame(2, 0, Pattern(10, 0)));
    REQUIRE_OK(p.client->ReadFrame(1s));
  }
}

TEST_CASE(
    "tcp: Shutdown from another thread unblocks a blocked read and write") {
  Pair p = MakePair();
  cpc::Status read_status;
  Clock::time_point returned;
  std::thread reader([&] {
    read_status = p.server->ReadFrame().status();  // no deadline
    returned = Clock::now();
  });
  std::this_thread::sleep_for(50ms);
  const auto t0 = Clock::now();
  p.server->Shutdown();
  reader.join();
  CHECK(read_status.code() == Code::kCancelled);
  CHECK(Ms(returned - t0) < 200);
  REQUIRE_CODE(p.server->WriteFrame(1, 0, {}), Code::kCancelled);
  REQUIRE_CODE(p.server->ReadFrame(), Code::kCancelled);

  // A writer blocked on a full socket (nobody reads).
  Pair q = MakePair();
  const std::vector<uint8_t> big(48u << 20);
  cpc::Status write_status;
  std::thread writer(
      [&] { write_status = q.client->WriteFrame(1, 0, big); });  // no deadline
  std::this_thread::sleep_for(100ms);
  const auto t1 = Clock::now();
  q.client->Shutdown();
  writer.join();
  CHECK(write_status.code() == Code::kCancelled);
  CHECK(Ms(Clock::now() - t1) < 200);
  // The peer sees the frame cut short.
  std::vector<uint8_t> sink(1 << 20);
  cpc::Status s;
  while ((s = q.server->ReadExact(sink, 1s)).ok()) {
  }
  CHECK((s.code() == Code::kDataLoss || s.code() == Code::kIoError));
}

TEST_CASE("tcp: loopback connections do not pace (Reno), both ends") {
  Pair p = MakePair();
  CHECK(p.client->congestion_control() == "reno");
  CHECK(p.server->congestion_control() == "reno");
}

TEST_CASE("tcp: WriteAll times out on a full socket") {
  Pair p = MakePair();
  const std::vector<uint8_t> big(64u << 20);
  const std::span<const uint8_t> parts[] = {big};
  const auto t0 = Clock::now();
  REQUIRE_CODE(p.client->WriteAll(parts, 100ms), Code::kTimeout);
  CHECK(Ms(Clock::now() - t0) < 1000);
  CHECK(p.client->bytes_written() > 0);
  CHECK(p.client->bytes_written() < big.size());
}

TEST_CASE("tcp: a frame over max_payload is refused") {
  Pair p = MakePair();
  REQUIRE_OK(p.client->WriteFrame(1, 0, Pattern(100, 0)));
  REQUIRE_OK(p.client->WriteFrame(1, 0, Pattern(100, 0)));
  REQUIRE_CODE(p.server->ReadFrameHeader(1s, 99), Code::kInvalidArgument);
  std::vector<uint8_t> skip(100);
  REQUIRE_OK(p.server->ReadExact(skip, 1s));
  REQUIRE_CODE(p.server->ReadFrame(1s, 10), Code::kInvalidArgument);

  const std::vector<uint8_t> huge(cpc::net::kMaxFramePayload + 1);
  REQUIRE_CODE(p.client->WriteFrame(1, 0, huge), Code::kInvalidArgument);
  CHECK(p.client->bytes_written() == 2 * 108);
}

TEST_CASE("tcp: ParseEndpoint") {
  using cpc::net::ParseEndpoint;
  auto e = ParseEndpoint("10.0.0.1:4000");
  REQUIRE_OK(e);
  CHECK(e->host == "10.0.0.1");
  CHECK(e->port == 4000);
  CHECK(e->ToString() == "10.0.0.1:4000");

  e = ParseEndpoint("[::1]:65535");
  REQUIRE_OK(e);
  CHECK(e->host == "::1");
  CHECK(e->port == 65535);
  CHECK(e->ToString() == "[::1]:65535");

  e = ParseEndpoint(":0");
  REQUIRE_OK(e);
  CHECK(e->host == "127.0.0.1");
  CHECK(e->port == 0);

  e = ParseEndpoint("migration-host.example:80");
  REQUIRE_OK(e);
  CHECK(e->host == "migration-host.example");

  for (const char* bad :
       {"", "host", "host:", ":", "host:65536", "host:-1", "host:+1", "host:1x",
        "host:123456", "::1:80", "[::1]", "[::1]80", "[::1:80", "[]:80",
        "[not-v6]:80", "ho st:80", "[::1]:"}) {
    INFO(bad);
    REQUIRE_CODE(ParseEndpoint(bad), Code::kInvalidArgument);
  }
}

TEST_CASE("tcp: Listener on port 0 gets a real port") {
  auto l = Listener::Listen({"127.0.0.1", 0});
  REQUIRE_OK(l);
  const Endpoint at = (*l)->local();
  CHECK(at.host == "127.0.0.1");
  CHECK(at.port != 0);
  auto c = Connection::Connect(at, 1s);
  REQUIRE_OK(c);
  auto s = (*l)->Accept(1s);
  REQUIRE_OK(s);
  CHECK((*s)->peer().port != 0);
  // A host name resolves.
  auto by_name = Connection::Connect({"localhost", at.port}, 1s);
  REQUIRE_OK(by_name);
  REQUIRE_OK((*l)->Accept(1s));
  // A zero-length read after Shutdown fails too.
  (*c)->Shutdown();
  REQUIRE_CODE((*c)->ReadExact({}), Code::kCancelled);

  // IPv6 loopback, where the machine has it.
  auto l6 = Listener::Listen({"::1", 0});
  if (l6.ok()) {
    CHECK((*l6)->local().port != 0);
    CHECK((*l6)->local().ToString().front() == '[');
    auto c6 = Connection::Connect((*l6)->local(), 1s);
    REQUIRE_OK(c6);
    REQUIRE_OK((*l6)->Accept(1s));
  }
}

TEST_CASE("tcp: Accept times out, and Close unblocks it") {
  auto l = Listener::Listen({"127.0.0.1", 0});
  REQUIRE_OK(l);
  const auto t0 = Clock::now();
  REQUIRE_CODE((*l)->Accept(50ms), Code::kTimeout);
  CHECK(Ms(Clock::now() - t0) < 500);
  cpc::Status st;
  std::thread acceptor([&] { st = (*l)->Accept().status(); });
  std::this_thread::sleep_for(50ms);
  (*l)->Close();
  acceptor.join();
  CHECK(st.code() == Code::kCancelled);
}

TEST_CASE("tcp: Connect to a closed port is an IO error") {
  uint16_t port;
  {
    auto l = Listener::Listen({"127.0.0.1", 0});
    REQUIRE_OK(l);
    port = (*l)->local().port;
  }
  const auto c = Connection::Connect({"127.0.0.1", port}, 1s);
  REQUIRE_CODE(c, Code::kIoError);
  CHECK(c.status().message().find("refused") != std::string::npos);
  REQUIRE_CODE(Connection::Connect({"", port}, 1s), Code::kInvalidArgument);
  REQUIRE_CODE(Connection::Connect({"no such host!", port}, 1s),
               Code::kInvalidArgument);
}

TEST_CASE("tcp: Connect times out when the peer never answers") {
  // A listener whose accept queue is full drops further SYNs.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) == 0);
  REQUIRE(::listen(fd, 0) == 0);
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  const Endpoint at{"127.0.0.1", ntohs(addr.sin_port)};
  std::vector<std::unique_ptr<Connection>> queued;
  cpc::Status last;
  for (int i = 0; i < 8 && last.ok(); ++i) {
    const auto t0 = Clock::now();
    auto c = Connection::Connect(at, 100ms);
    if (c.ok()) {
      queued.push_back(std::move(c).value());
    } else {
      last = c.status();
      CHECK(Ms(Clock::now() - t0) < 1000);
    }
  }
  ::close(fd);
  INFO(last.ToString());
  CHECK(last.code() == Code::kTimeout);
}

// Not run by default: `cpc_tests "[bench]"` (use a release build).
// CPC_TCP_BENCH_MIB sets the volume per connection (default 4096).
TEST_CASE("bench: tcp loopback throughput", "[.][bench]") {
  const char* env = std::getenv("CPC_TCP_BENCH_MIB");
  const size_t mib = env ? std::strtoul(env, nullptr, 10) : 4096;
  constexpr size_t kFrame = 1u << 20;
  for (int nconn : {1, 2}) {
    std::vector<Pair> pairs;
    for (int i = 0; i < nconn; ++i) pairs.push_back(MakePair());
    std::vector<std::thread> threads;
    std::atomic<bool> ok{true};
    const auto t0 = Clock::now();
    for (auto& p : pairs) {
      threads.emplace_back([&, c = p.client.get()] {
        const std::vector<uint8_t> payload(kFrame, 0x5a);
        for (size_t i = 0; i < mib; ++i)
          if (!c->WriteFrame(1, 0, payload).ok()) ok = false;
      });
      threads.emplace_back([&, s = p.server.get()] {
        std::vector<uint8_t> buf(kFrame);
        for (size_t i = 0; i < mib; ++i) {
          auto h = s->ReadFrameHeader();
          if (!h.ok() || !s->ReadExact(std::span(buf).first(h->length)).ok())
            ok = false;
        }
      });
    }
    for (auto& t : threads) t.join();
    const double secs =
        std::chrono::duration<double>(Clock::now() - t0).count();
    REQUIRE(ok);
    const double gbps = static_cast<double>(nconn * mib * kFrame) / secs / 1e9;
    std::printf("tcp loopback, %d connection(s), 1 MiB frames: %.2f GB/s\n",
                nconn, gbps);
  }
}
