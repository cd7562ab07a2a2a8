#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include <cpc/status.h>

#include "test_util.h"
#include "transport/mitm_proxy.h"
#include "transport/tcp.h"

using cpc::Clock;
using cpc::Code;
using cpc::net::Connection;
using cpc::net::Frame;
using cpc::net::Listener;
using cpc::net::MitmProxy;
using Action = MitmProxy::Action;
using Direction = MitmProxy::Direction;
using Rule = MitmProxy::Rule;
using namespace std::chrono_literals;

namespace {

struct Link {
  std::unique_ptr<Connection> client;  // talks to the proxy
  std::unique_ptr<Connection> server;  // accepted from the proxy
};

struct Rig {
  std::unique_ptr<Listener> listener;  // the real server
  std::unique_ptr<MitmProxy> proxy;

  Link Open() {
    Link l;
    auto c = Connection::Connect(proxy->endpoint(), 2s);
    REQUIRE_OK(c);
    l.client = std::move(c).value();
    auto s = listener->Accept(2s);
    REQUIRE_OK(s);
    l.server = std::move(s).value();
    return l;
  }
};

Rig MakeRig(std::vector<Rule> rules = {}) {
  Rig r;
  auto l = Listener::Listen({"127.0.0.1", 0});
  REQUIRE_OK(l);
  r.listener = std::move(l).value();
  auto p = MitmProxy::Start(r.listener->local(), std::move(rules));
  REQUIRE_OK(p);
  r.proxy = std::move(p).value();
  CHECK(r.proxy->endpoint().port != 0);
  return r;
}

// Frame `id`: payload[0] = id, then a pattern derived from it.
std::vector<uint8_t> Payload(int id, size_t n = 16) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(id * 31 + i * 7);
  if (n > 0) v[0] = static_cast<uint8_t>(id);
  return v;
}

void Send(Connection& c, int id, uint16_t type = 1, size_t n = 16) {
  REQUIRE_OK(c.WriteFrame(type, static_cast<uint16_t>(id), Payload(id, n), 2s));
}

void SendAll(Connection& c, std::initializer_list<int> ids) {
  for (int id : ids) Send(c, id);
}

struct Received {
  std::vector<Frame> frames;
  std::vector<int> ids;  // from the flags field
  cpc::Status end;
};

// Reads frames until an error (EOF included).
Received Drain(Connection& c) {
  Received r;
  for (;;) {
    auto f = c.ReadFrame(2s);
    if (!f.ok()) {
      r.end = f.status();
      return r;
    }
    r.ids.push_back(f->header.flags);
    r.frames.push_back(std::move(f).value());
  }
}

// Client sends `ids` then half-closes; returns what the server received.
Received Through(Link& l, std::initializer_list<int> ids) {
  SendAll(*l.client, ids);
  l.client->CloseWrite();
  Received r = Drain(*l.server);
  INFO(r.end.ToString());
  CHECK(r.end.code() == Code::kIoError);  // clean EOF forwarded
  return r;
}

using Ids = std::vector<int>;

}  // namespace

TEST_CASE("mitm: forwards both directions and half-closes unchanged") {
  Rig rig = MakeRig();
  Link l = rig.Open();
  SendAll(*l.server, {100, 101, 102});
  Received down = Through(l, {0, 1, 2, 3, 4});
  CHECK(down.ids == Ids{0, 1, 2, 3, 4});
  for (const Frame& f : down.frames)
    CHECK(f.payload == Payload(f.header.flags));
  l.server->CloseWrite();
  Received up = Drain(*l.client);
  CHECK(up.ids == Ids{100, 101, 102});
  CHECK(up.end.code() == Code::kIoError);
  const auto st = rig.proxy->stats();
  CHECK(st.connections == 1);
  CHECK(st.frames_read[0] == 5);
  CHECK(st.frames_sent[0] == 5);
  CHECK(st.frames_read[1] == 3);
  CHECK(st.frames_sent[1] == 3);
  CHECK(st.rules_fired == 0);
  // Big and empty frames pass too.
  Link l2 = rig.Open();
  Send(*l2.client, 7, 1, 3u << 20);
  Send(*l2.client, 8, 1, 0);
  auto big = l2.server->ReadFrame(2s);
  REQUIRE_OK(big);
  CHECK(big->payload == Payload(7, 3u << 20));
  auto empty = l2.server->ReadFrame(2s);
  REQUIRE_OK(empty);
  CHECK(empty->payload.empty());
}

TEST_CASE("mitm: tamper flips exactly one payload byte") {
  Rig rig = MakeRig({{.action = Action::kTamper, .ordinal = 2},
                     {.action = Action::kTamper, .ordinal = 3, .offset = 0}});
  Link l = rig.Open();
  Received r = Through(l, {0, 1, 2, 3, 4});
  REQUIRE(r.ids == Ids{0, 1, 2, 3, 4});
  for (const Frame& f : r.frames) {
    const auto want = Payload(f.header.flags);
    REQUIRE(f.payload.size() == want.size());
    std::vector<size_t> diff;
    for (size_t i = 0; i < want.size(); ++i)
      if (f.payload[i] != want[i]) diff.push_back(i);
    if (f.header.flags == 2) {
      REQUIRE(diff == std::vector<size_t>{8});  // the middle of 16 bytes
      CHECK((f.payload[8] ^ want[8]) == 0xff);
    } else if (f.header.flags == 3) {
      CHECK(diff == std::vector<size_t>{0});
    } else {
      CHECK(diff.empty());
    }
  }
  CHECK(rig.proxy->fired(0) == 1);
  CHECK(rig.proxy->fired(1) == 1);
  CHECK(rig.proxy->stats().rules_fired == 2);
}

TEST_CASE("mitm: drop removes exactly that frame") {
  Rig rig = MakeRig({{.action = Action::kDrop, .ordinal = 3}});
  Link l = rig.Open();
  CHECK(Through(l, {0, 1, 2, 3, 4, 5}).ids == Ids{0, 1, 2, 4, 5});
  CHECK(rig.proxy->WaitFired(0, 1, 1s));
  const auto st = rig.proxy->stats();
  CHECK(st.frames_read[0] == 6);
  CHECK(st.frames_sent[0] == 5);
}

TEST_CASE("mitm: a rule may fire several times") {
  Rig rig = MakeRig({{.action = Action::kDrop, .ordinal = 1, .times = 2}});
  Link l = rig.Open();
  CHECK(Through(l, {0, 1, 2, 3, 4}).ids == Ids{0, 3, 4});
  CHECK(rig.proxy->fired(0) == 2);
}

TEST_CASE(
    "mitm: duplicate, reorder and replay change the order as documented") {
  SECTION("duplicate") {
    Rig rig = MakeRig({{.action = Action::kDuplicate, .ordinal = 1}});
    Link l = rig.Open();
    CHECK(Through(l, {0, 1, 2, 3}).ids == Ids{0, 1, 1, 2, 3});
    CHECK(rig.proxy->stats().frames_sent[0] == 5);
  }
  SECTION("reorder") {
    Rig rig = MakeRig({{.action = Action::kReorder, .ordinal = 1}});
    Link l = rig.Open();
    CHECK(Through(l, {0, 1, 2, 3}).ids == Ids{0, 2, 1, 3});
  }
  SECTION("reorder of the last frame flushes it at EOF") {
    Rig rig = MakeRig({{.action = Action::kReorder, .ordinal = 2}});
    Link l = rig.Open();
    CHECK(Through(l, {0, 1, 2}).ids == Ids{0, 1, 2});
  }
  SECTION("replay after K frames") {
    Rig rig =
        MakeRig({{.action = Action::kReplay, .ordinal = 1, .replay_after = 2}});
    Link l = rig.Open();
    CHECK(Through(l, {0, 1, 2, 3, 4, 5}).ids == Ids{0, 1, 2, 3, 1, 4, 5});
  }
  SECTION("replay pending at EOF is flushed") {
    Rig rig =
        MakeRig({{.action = Action::kReplay, .ordinal = 1, .replay_after = 5}});
    Link l = rig.Open();
    CHECK(Through(l, {0, 1, 2}).ids == Ids{0, 1, 2, 1});
  }
}

TEST_CASE("mitm: truncate makes the receiver see data loss") {
  Rig rig = MakeRig({{.action = Action::kTruncate, .ordinal = 2}});
  Link l = rig.Open();
  SendAll(*l.client, {0, 1, 2, 3});
  Received r = Drain(*l.server);
  CHECK(r.ids == Ids{0, 1});
  INFO(r.end.ToString());
  CHECK(r.end.code() == Code::kDataLoss);
  CHECK(l.server->bytes_read() == 2 * (8 + 16) + 8 + 8);  // half the payload
  // Both sides were closed: the client reads EOF.
  REQUIRE_CODE(l.client->ReadFrame(2s), Code::kIoError);
  CHECK(rig.proxy->stats().closed_connections == 1);
}

TEST_CASE("mitm: shorten forwards a well-formed frame with half its payload") {
  Rig rig = MakeRig({{.action = Action::kShorten, .ordinal = 2}});
  Link l = rig.Open();
  Received r = Through(l, {0, 1, 2, 3});
  CHECK(r.ids == Ids{0, 1, 2, 3});  // the connection stays open
  REQUIRE(r.frames.size() == 4);
  const auto whole = Payload(2);
  CHECK(r.frames[2].payload ==
        std::vector<uint8_t>(whole.begin(), whole.begin() + 8));
  CHECK(r.frames[3].payload == Payload(3));
  CHECK(rig.proxy->stats().closed_connections == 0);
}

TEST_CASE("mitm: cut closes both ends before the frame") {
  Rig rig = MakeRig({{.action = Action::kCut, .ordinal = 2}});
  Link l = rig.Open();
  SendAll(*l.client, {0, 1, 2});
  Received r = Drain(*l.server);
  CHECK(r.ids == Ids{0, 1});
  CHECK(r.end.code() == Code::kIoError);
  REQUIRE_CODE(l.client->ReadFrame(2s), Code::kIoError);
  // The client's writes fail once the proxy resets the connection.
  cpc::Status w;
  const auto t0 = Clock::now();
  while ((w = l.client->WriteFrame(1, 9, Payload(9), 1s)).ok() &&
         Clock::now() - t0 < 1s)
    std::this_thread::sleep_for(5ms);
  CHECK(w.code() == Code::kIoError);
}

TEST_CASE("mitm: rules match by type, size, direction and connection") {
  SECTION("type and minimum payload") {
    Rig rig = MakeRig({{.action = Action::kDrop, .type = 7, .ordinal = 1},
                       {.action = Action::kDrop, .min_payload = 100}});
    Link l = rig.Open();
    Send(*l.client, 0, 7);
    Send(*l.client, 1, 1);
    Send(*l.client, 2, 7);       // second type-7 frame: dropped
    Send(*l.client, 3, 1, 200);  // big: dropped
    Send(*l.client, 4, 7, 300);  // big, but rule 1 is spent
    l.client->CloseWrite();
    CHECK(Drain(*l.server).ids == Ids{0, 1, 4});
  }
  SECTION("server to client") {
    Rig rig = MakeRig({{.action = Action::kDuplicate,
                        .direction = Direction::kServerToClient}});
    Link l = rig.Open();
    SendAll(*l.server, {0, 1});
    l.server->CloseWrite();
    CHECK(Drain(*l.client).ids == Ids{0, 0, 1});
    CHECK(Through(l, {5, 6}).ids == Ids{5, 6});
  }
  SECTION("connection index") {
    Rig rig = MakeRig({{.action = Action::kDrop, .connection = 1}});
    Link a = rig.Open();
    Link b = rig.Open();
    CHECK(Through(b, {0, 1}).ids == Ids{1});
    CHECK(Through(a, {0, 1}).ids == Ids{0, 1});
    CHECK(rig.proxy->stats().connections == 2);
  }
  SECTION("rule added while running") {
    Rig rig = MakeRig();
    Link l = rig.Open();
    Send(*l.client, 0);
    REQUIRE_OK(l.server->ReadFrame(2s));
    const auto id = rig.proxy->AddRule({.action = Action::kDrop, .ordinal = 1});
    CHECK(Through(l, {1, 2, 3}).ids == Ids{1, 3});
    CHECK(rig.proxy->fired(id) == 1);
  }
}

TEST_CASE("mitm: CutAll cuts current connections, later ones work") {
  Rig rig = MakeRig();
  Link a = rig.Open();
  Link b = rig.Open();
  Send(*a.client, 0);
  REQUIRE_OK(a.server->ReadFrame(2s));
  rig.proxy->CutAll();
  for (Link* l : {&a, &b}) {
    REQUIRE_CODE(l->client->ReadFrame(2s), Code::kIoError);
    REQUIRE_CODE(l->server->ReadFrame(2s), Code::kIoError);
  }
  Link c = rig.Open();
  CHECK(Through(c, {0, 1}).ids == Ids{0, 1});
  CHECK(rig.proxy->stats().closed_connections == 2);
}

TEST_CASE("mitm: destroying the proxy closes everything promptly") {
  Rig rig = MakeRig();
  Link l = rig.Open();
  Send(*l.client, 0);
  REQUIRE_OK(l.server->ReadFrame(2s));
  const auto t0 = Clock::now();
  rig.proxy.reset();
  CHECK(Clock::now() - t0 < 500ms);
  REQUIRE_CODE(l.client->ReadFrame(2s), Code::kIoError);
  REQUIRE_CODE(l.server->ReadFrame(2s), Code::kIoError);
}

// Not run by default: `cpc_tests "[bench]"` (use a release build).
TEST_CASE("bench: mitm proxy throughput", "[.][bench]") {
  Rig rig = MakeRig();
  Link l = rig.Open();
  constexpr size_t kFrames = 1024, kFrame = 1u << 20;
  std::atomic<bool> ok{true};
  const auto t0 = Clock::now();
  std::thread writer([&] {
    const std::vector<uint8_t> payload(kFrame, 0x5a);
    for (size_t i = 0; i < kFrames; ++i)
      if (!l.client->WriteFrame(1, 0, payload).ok()) ok = false;
  });
  std::vector<uint8_t> buf(kFrame);
  for (size_t i = 0; i < kFrames; ++i) {
    auto h = l.server->ReadFrameHeader();
    if (!h.ok() || !l.server->ReadExact(std::span(buf).first(h->length)).ok())
      ok = false;
  }
  writer.join();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  REQUIRE(ok);
  std::printf("mitm proxy, 1 connection, 1 MiB frames: %.2f GB/s\n",
              static_cast<double>(kFrames * kFrame) / secs / 1e9);
}
