#include "decode_cmd.h"

#include <algorithm>
#include <cstdio>
#include <istream>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <sstream>

#include "codec/text.h"
#include "codec/tpkt.h"
#include "codec/x224.h"
#include "frame_render.h"
#include "pcap_reader.h"

namespace isoproxy {

using codec::Bytes;
using nlohmann::json;

namespace {

constexpr const char* kPrefix = "isoproxy: decode: ";

std::string hex2(std::uint8_t v) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02X", v);
  return buf;
}

std::string framer_error_text(codec::FramerError e, Bytes header, std::size_t max_length) {
  switch (e) {
    case codec::FramerError::kBadVersion:
      return "not a TPKT: version " + hex2(header[0]) + " (RFC 1006 §6: always 3)";
    case codec::FramerError::kLengthTooShort:
      return "TPKT length " + std::to_string((header[2] << 8) | header[3]) + " is below the minimum of 7";
    case codec::FramerError::kLengthTooLong:
      return "TPKT length " + std::to_string((header[2] << 8) | header[3]) + " is above the maximum of " +
             std::to_string(max_length);
    case codec::FramerError::kNone:
      break;
  }
  return "framing error";
}

// Whether a captured segment starts with a TPKT frame holding a TPDU: where
// decoding can pick up again after bytes were lost. Senders write whole
// frames, so after a gap most segments start one, as Wireshark also assumes.
// The reserved octet must be 0 (Wireshark's is_tpkt), except in a CR or a
// CC, where known MTAs set it (KB Q157015, KB Q151626): user data that looks
// like a frame header is told from one by little else. kReservedOnly: the
// segment would start a frame but for its reserved octet.
enum class FrameStart { kNo, kYes, kReservedOnly };
FrameStart starts_frame(Bytes b, std::size_t max_length) {
  if (b.size() < 6 || b[0] != codec::kTpktVersion) return FrameStart::kNo;
  const bool reserved_ok = b[1] == 0 || (b[5] >> 4) == 0xD || (b[5] >> 4) == 0xE;
  const std::size_t length = (std::size_t{b[2]} << 8) | b[3];
  if (length < codec::kTpktMinLength || length > max_length) return FrameStart::kNo;
  const std::size_t li = b[4];  // the octets after it, within the frame
  if (li == 0 || li + 5 > length) return FrameStart::kNo;
  switch (b[5] >> 4) {
    case 0x1: case 0x2: case 0x5: case 0x6: case 0x7:  // ED EA RJ AK ER
    case 0x8: case 0xC: case 0xD: case 0xE: case 0xF:  // DR DC CC CR DT
      break;
    default:
      return FrameStart::kNo;
  }
  // A segment longer than the frame: the next frame starts where it ends.
  if (b.size() > length && b[length] != codec::kTpktVersion) return FrameStart::kNo;
  return reserved_ok ? FrameStart::kYes : FrameStart::kReservedOnly;
}

// The --json document, written as decoding goes: each frame is printed as
// soon as it is decoded, so that memory stays that of one frame however long
// the input (a capture of a day's polling has millions). Errors and notices
// (a few per stream) are kept, serialized, until the end. Strings that are
// not UTF-8 (a file name, a TSAP is always hex-escaped already) are printed
// with U+FFFD in place of the bad octets rather than failing the document.
class JsonStream {
 public:
  // `head`: the members before "frames". Nothing is written before the
  // first frame (or close()), so that an input that cannot be read at all
  // leaves no half document.
  JsonStream(std::ostream& out, std::vector<std::pair<std::string, json>> head) : out_(out), head_(std::move(head)) {}
  static std::string text(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

  void frame(const json& j) {
    start();
    out_ << (frames_ == 0 ? "\n    " : ",\n    ") << text(j);
    ++frames_;
  }
  void error(const json& j) { errors_.push_back(text(j)); }
  void notice(const json& j) { notices_.push_back(text(j)); }

  // Closes the document; `with_notices` for captures; `tail`: members after.
  void close(bool with_notices, const std::vector<std::pair<std::string, json>>& tail) {
    start();
    out_ << (frames_ == 0 ? "]" : "\n  ]");
    list("errors", errors_);
    if (with_notices) list("notices", notices_);
    for (const auto& [key, value] : tail) out_ << ",\n  " << text(key) << ": " << text(value);
    out_ << "\n}\n";
  }

 private:
  void start() {
    if (started_) return;
    started_ = true;
    out_ << "{";
    for (const auto& [key, value] : head_) out_ << "\n  " << text(key) << ": " << text(value) << ",";
    out_ << "\n  \"frames\": [";
  }

  void list(const char* key, const std::vector<std::string>& items) {
    out_ << ",\n  \"" << key << "\": [";
    for (std::size_t i = 0; i < items.size(); ++i) out_ << (i == 0 ? "\n    " : ",\n    ") << items[i];
    out_ << (items.empty() ? "]" : "\n  ]");
  }

  std::ostream& out_;
  std::vector<std::pair<std::string, json>> head_;
  bool started_ = false;
  std::size_t frames_ = 0;
  std::vector<std::string> errors_;
  std::vector<std::string> notices_;
};

// Runs one direction of a stream through the framer and decoder and reports
// every frame (text or JSON) and every error. Shared by hex input and pcap.
class StreamDecoder {
 public:
  // `js`: the JSON document (with --json), else text goes to `out`.
  // `capture`: the bytes come from a capture, where decoding can resume
  // after lost bytes.
  StreamDecoder(const DecodeCmdOptions& o, std::ostream& out, JsonStream* js, bool capture)
      : o_(o), out_(out), framer_(o.max_length), js_(js), capture_(capture) {}

  // pcap only: from here, whole segments (one feed each) are skipped until
  // one starts a frame, where decoding resumes. `why` names what lost the place.
  // `after_error`: an error already said that bytes were lost, so a direction
  // that never finds a frame again gets a notice, not a second error.
  void resync(const std::string& why, bool after_error) {
    skipped_ += framer_.held() + candidate_.size();
    candidate_.clear();  // a header held before the loss is not continued after it
    framer_ = codec::TpktFramer(o_.max_length);
    hunting_ = true;
    hunt_why_ = why;
    hunt_after_error_ = after_error;
  }

  // `label` prefixes each frame's heading in text; `extra` is merged into its JSON.
  void feed(Bytes in, const std::string& label, const json& extra) {
    if (!hunting_) {
      frame_bytes(in, label, extra);
      return;
    }
    // A sender that writes the TPKT header apart from the TPDU starts a frame
    // with a segment too short to judge: it is kept and judged with the next.
    std::vector<std::uint8_t> joined;
    Bytes probe = in;
    if (!candidate_.empty()) {
      joined = candidate_;
      joined.insert(joined.end(), in.begin(), in.end());
      probe = joined;
    }
    if (!probe.empty() && probe.size() < 6 && probe[0] == codec::kTpktVersion) {
      candidate_.assign(probe.begin(), probe.end());
      return;
    }
    const FrameStart start = starts_frame(probe, o_.max_length);
    if (start == FrameStart::kReservedOnly) ++reserved_only_;
    if (start != FrameStart::kYes) {
      skipped_ += candidate_.size();
      const bool had_candidate = !candidate_.empty();
      candidate_.clear();
      if (!had_candidate) {
        skipped_ += in.size();
        return;
      }
      feed(in, label, extra);  // the short segment was no header; this one may start a frame
      return;
    }
    hunting_ = false;
    candidate_.clear();
    if (skipped_ > 0) {
      notice(label,
             "decoding resumes at a frame boundary after " + std::to_string(skipped_) + " octets skipped (" +
                 hunt_why_ + ")",
             extra);
    }
    skipped_ = 0;
    frame_bytes(probe, label, extra);
  }

 private:
  void frame_bytes(Bytes in, const std::string& label, const json& extra) {
    if (framer_.failed()) return;  // after a framing error the rest is not RFC 1006
    for (;;) {
      Bytes before = in;
      auto r = framer_.next(in);
      if (r.status == codec::TpktFramer::kNeedMore) return;
      if (r.status == codec::TpktFramer::kError) {
        // The offending header is where the framer stopped: either in the
        // caller's bytes or in what it had held back.
        Bytes header = framer_.held() >= codec::kTpktHeaderSize ? framer_.held_bytes() : before;
        std::string msg = header.size() >= codec::kTpktHeaderSize
                              ? framer_error_text(r.error, header, o_.max_length)
                              : std::string(codec::framer_error_name(r.error));
        const std::size_t rest = in.size() + framer_.held();
        if (capture_) {
          // A capture: the next segment that starts a frame may be RFC 1006 again.
          error(label, std::string(codec::framer_error_name(r.error)),
                msg + "; skipped to the next segment that starts a frame", extra);
          resync("after a framing error", true);
          skipped_ = rest;
          return;
        }
        error(label, std::string(codec::framer_error_name(r.error)), msg + "; " + std::to_string(rest) +
                                                                      " octets not decoded",
              extra);
        return;
      }
      emit_frame(r.frame, label, extra);
    }
  }

 public:

  void emit_frame(Bytes raw, const std::string& label, const json& extra) {
    ++frames_;
    codec::DecodeOptions dopt;
    dopt.strict = o_.strict;
    auto f = codec::decode_frame(raw, dopt, o_.max_length);
    if (!f) {
      report_reject(raw, f.error(), label, extra);
      return;
    }
    anomalies_ += f->anomalies.size();
    if (js_ != nullptr) {
      json j = extra;
      j["index"] = frames_;
      j.update(frame_json(*f));
      js_->frame(j);
    } else {
      out_ << label << "frame " << frames_ << ": " << codec::tpdu_type_name(f->tpdu.type) << " "
           << codec::tpdu_type_long_name(f->tpdu.type) << ", " << raw.size() << " octets\n"
           << frame_text(*f, 2);
    }
  }

  void emit_tpdu(Bytes raw, const std::string& label) {
    ++frames_;
    codec::DecodeOptions dopt;
    dopt.strict = o_.strict;
    std::vector<codec::Anomaly> anomalies;
    auto t = codec::decode_tpdu(raw, dopt, &anomalies);
    if (!t) {
      report_reject(raw, t.error(), label, json::object());
      return;
    }
    anomalies_ += anomalies.size();
    if (js_ != nullptr) {
      js_->frame({{"index", frames_},
                  {"length", raw.size()},
                  {"tpdu", tpdu_json(*t)},
                  {"anomalies", anomalies_json(anomalies)},
                  {"hex", codec::to_hex(raw)}});
    } else {
      out_ << label << "TPDU " << frames_ << ": " << codec::tpdu_type_name(t->type) << " "
           << codec::tpdu_type_long_name(t->type) << ", " << raw.size() << " octets\n"
           << tpdu_text(*t, 2) << anomalies_text(anomalies, 2);
    }
  }

  // Bytes were skipped (a gap in a capture): what follows does not continue
  // the frame under way, so decoding resumes at the next segment that starts one.
  void lose_sync(const std::string& label, const std::string& why, const json& extra, bool at_end) {
    const std::string text = why.starts_with("gap: ") ? why.substr(5) : why;  // the kind says it
    error(label, "gap",
          text + (at_end ? "; nothing captured follows it" : "; decoding resumes at the next segment that starts a frame"),
          extra);
    resync("after the gap", true);
  }

  // At end of input: a frame cut short is an error (the peer closed mid-frame).
  void finish(const std::string& label, const json& extra) {
    if (hunting_ && skipped_ + candidate_.size() > 0) {
      const std::string msg = std::to_string(skipped_ + candidate_.size()) + " octets skipped (" + hunt_why_ +
                              ") and no segment after them started a frame: not decoded" +
                              (reserved_only_ == 0
                                   ? std::string()
                                   : " (" + std::to_string(reserved_only_) + " segment" +
                                         (reserved_only_ == 1 ? "" : "s") +
                                         " would have but for a TPKT reserved octet that is not 0, which only a CR "
                                         "or CC may have where decoding resumes)");
      if (hunt_after_error_) {
        notice(label, msg, extra);
      } else {
        error(label, "no-frame", msg, extra);
      }
      return;
    }
    if (framer_.failed() || hunting_ || framer_.held() == 0) return;
    const std::string what =
        framer_.expected() ? "declared " + std::to_string(framer_.expected()) + " octets, " +
                                 std::to_string(framer_.held()) + " present"
                           : "TPKT header incomplete: " + std::to_string(framer_.held()) + " of 4 octets";
    error(label, "truncated", "input ends inside a frame: " + what, extra);
  }

  void notice(const std::string& label, const std::string& msg, const json& extra) {
    if (js_ != nullptr) {
      json j = extra;
      j["message"] = msg;
      js_->notice(j);
    } else {
      out_ << label << "notice: " << msg << "\n";
    }
  }

  void error(const std::string& label, const std::string& kind, const std::string& msg, const json& extra) {
    ++errors_;
    if (first_error_.empty()) first_error_ = label + msg;
    if (js_ != nullptr) {
      json j = extra;
      j["kind"] = kind;
      j["detail"] = msg;
      js_->error(j);
    } else {
      out_ << label << "error: " << kind << ": " << msg << "\n";
    }
  }

  std::size_t frames() const { return frames_; }
  std::size_t errors() const { return errors_; }
  std::size_t anomalies() const { return anomalies_; }
  const std::string& first_error() const { return first_error_; }

 private:
  void report_reject(Bytes raw, const codec::DecodeError& e, const std::string& label, const json& extra) {
    ++errors_;
    const std::string what = (o_.cotp ? "TPDU " : "frame ") + std::to_string(frames_);
    const std::string msg = what + " rejected: " + std::string(codec::decode_error_name(e.kind)) + ": " + e.detail;
    if (first_error_.empty()) first_error_ = label + msg;
    if (js_ != nullptr) {
      json j = extra;
      j["index"] = frames_;
      j["length"] = raw.size();
      j["error"] = decode_error_json(e);
      j["hex"] = codec::to_hex(raw);
      js_->frame(j);
      js_->error({{"index", frames_}, {"kind", codec::decode_error_name(e.kind)}, {"detail", e.detail}});
    } else {
      out_ << label << what << ": REJECTED " << codec::decode_error_name(e.kind) << ": " << e.detail << "\n"
           << "  hex             " << codec::to_hex(raw) << "\n";
    }
  }

  const DecodeCmdOptions& o_;
  std::ostream& out_;
  codec::TpktFramer framer_;
  JsonStream* js_;
  bool capture_;
  bool hunting_ = false;
  bool hunt_after_error_ = false;
  std::string hunt_why_;
  std::uint64_t skipped_ = 0;
  std::uint64_t reserved_only_ = 0;  // segments passed over for their reserved octet alone
  std::vector<std::uint8_t> candidate_;  // a short segment that may be a TPKT header
  std::size_t frames_ = 0;
  std::size_t errors_ = 0;
  std::size_t anomalies_ = 0;
  std::string first_error_;
};

int finish_status(std::size_t errors, std::size_t frames, const std::string& first, std::ostream& err) {
  if (errors == 0) return 0;
  err << kPrefix << first;
  if (errors > 1) err << " (" << errors << " errors in all)";
  else if (frames > 1) err << " (" << frames << " frames read)";
  err << "\n";
  return 1;
}

int decode_addresses(const DecodeCmdOptions& o, std::ostream& out, std::ostream& err) {
  json arr = json::array();
  for (const std::string& a : o.addresses) {
    auto bytes = codec::parse_hex(a);
    if (!bytes) {
      err << kPrefix << "--address " << a << ": " << bytes.error().message << "\n";
      return 2;
    }
    if (bytes->empty()) {
      err << kPrefix << "--address: empty address\n";
      return 2;
    }
    const codec::AddressText t = codec::address_text(*bytes);
    if (o.json) {
      arr.push_back({{"hex", codec::to_hex(*bytes)}, {"address", t.primary}, {"alternatives", t.alternatives}});
    } else {
      out << t.primary;
      for (const auto& alt : t.alternatives) out << "  (also " << alt << ")";
      out << "\n";
    }
  }
  if (o.json) out << json{{"addresses", arr}}.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
  return 0;
}

int decode_hex(const DecodeCmdOptions& o, std::istream& in, std::ostream& out, std::ostream& err) {
  std::vector<std::string> inputs;  // with --cotp: one TPDU each; else joined into one stream
  std::string all;                  // standard input, as read
  if (o.from_stdin) {
    // Hex pasted or piped from a log, not a capture: bounded, so that
    // `decode - < /dev/zero` ends with a message, not with the memory.
    constexpr std::size_t kMaxStdin = std::size_t{16} << 20;
    std::size_t total = 0;
    char buf[65536];
    while (in.read(buf, sizeof buf) || in.gcount() > 0) {
      total += static_cast<std::size_t>(in.gcount());
      if (total > kMaxStdin) {
        err << kPrefix << "standard input: more than 16 MiB of hex; decode a capture with --pcap, or split the input\n";
        return 2;
      }
      all.append(buf, static_cast<std::size_t>(in.gcount()));
    }
    if (o.cotp) {
      std::istringstream lines(all);
      for (std::string l; std::getline(lines, l);) {
        if (l.find_first_not_of(" \t\r") != std::string::npos) inputs.push_back(l);
      }
    } else {
      inputs.push_back(all);
    }
    if (in.bad()) {
      err << kPrefix << "cannot read standard input\n";
      return 2;
    }
  } else if (o.cotp) {
    inputs = o.hex;
  } else {
    std::string joined;
    for (const auto& h : o.hex) joined += h + " ";
    inputs.push_back(joined);
  }

  std::vector<std::vector<std::uint8_t>> parsed;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    auto b = codec::parse_hex(inputs[i]);
    if (!b) {
      // A bad digit is named by the argument or line it is in, and its place
      // there, not by its place in the joined stream.
      std::vector<std::string> parts;
      if (o.from_stdin) {
        std::istringstream lines(all);
        for (std::string l; std::getline(lines, l);) parts.push_back(l);
      } else {
        parts = o.hex;
      }
      for (std::size_t k = 0; k < parts.size(); ++k) {
        auto part = codec::parse_hex(parts[k]);
        if (!part && part.error().message.starts_with("not a hex digit")) {
          err << kPrefix << (o.from_stdin ? "standard input, line " : "argument ") << k + 1 << ": "
              << part.error().message << "\n";
          return 2;
        }
      }
      err << kPrefix << (o.from_stdin ? "standard input" : "argument") << ": " << b.error().message << "\n";
      return 2;
    }
    parsed.push_back(std::move(*b));
  }
  std::size_t total = 0;
  for (const auto& p : parsed) total += p.size();
  if (total == 0) {
    err << kPrefix << "no hex to decode (give frames as arguments, or '-' to read standard input)\n";
    return 2;
  }

  std::optional<JsonStream> js;
  if (o.json) js.emplace(out, std::vector<std::pair<std::string, json>>{});
  StreamDecoder d(o, out, js ? &*js : nullptr, false);
  if (o.cotp) {
    for (const auto& p : parsed) {
      if (!p.empty()) d.emit_tpdu(p, "");
    }
  } else {
    d.feed(parsed.front(), "", json::object());
    d.finish("", json::object());
  }
  if (js) {
    js->close(false, {});
  } else if (d.frames() > 0 || d.errors() > 0) {
    out << d.frames() << (o.cotp ? " TPDU" : " frame") << (d.frames() == 1 ? "" : "s") << ", " << d.anomalies()
        << " anomal" << (d.anomalies() == 1 ? "y" : "ies") << ", " << d.errors() << " error"
        << (d.errors() == 1 ? "" : "s") << "\n";
  }
  return finish_status(d.errors(), d.frames(), d.first_error(), err);
}

int decode_pcap(const DecodeCmdOptions& o, std::ostream& out, std::ostream& err) {
  // One decoder per stream direction.
  std::map<std::pair<int, int>, std::unique_ptr<StreamDecoder>> decoders;
  std::optional<JsonStream> js;
  if (o.json) js.emplace(out, std::vector<std::pair<std::string, json>>{{"file", o.pcap}, {"port", o.port}});
  auto dir_name = [](PcapDirection d) { return d == PcapDirection::kClientToServer ? "client->server" : "server->client"; };
  auto label_of = [&](const PcapStreamInfo& s, PcapDirection d, std::uint64_t packet, double since_start) {
    char ts[32];
    std::snprintf(ts, sizeof ts, "%.6f", since_start);
    const bool c2s = d == PcapDirection::kClientToServer;
    return "#" + std::to_string(packet) + " " + ts + " stream " + std::to_string(s.id) + " " +
           (c2s ? s.client : s.server) + " -> " + (c2s ? s.server : s.client) + " ";
  };
  auto decoder_for = [&](const PcapStreamInfo& stream, PcapDirection d) -> StreamDecoder& {
    auto& p = decoders[{stream.id, static_cast<int>(d)}];
    if (!p) {
      p = std::make_unique<StreamDecoder>(o, out, js ? &*js : nullptr, true);
      // Seen from its SYN, a direction starts with a frame; joined midway, it
      // starts anywhere, and decoding waits for a segment that starts one.
      if (!stream.saw_syn) p->resync("the capture joined the stream midway", false);
    }
    return *p;
  };

  // By stream id, not the reader's PcapStreamInfo: those are gone once read_pcap_streams returns.
  std::map<std::pair<int, int>, std::pair<int, json>> last_extra;
  auto res = read_pcap_streams(
      o.pcap, o.port,
      [&](const PcapChunk& c) {
        json extra = {{"stream", c.stream->id}, {"direction", dir_name(c.direction)}, {"packet", c.packet},
                      {"time", c.time}};
        decoder_for(*c.stream, c.direction)
            .feed(c.bytes, label_of(*c.stream, c.direction, c.packet, c.since_start), extra);
        last_extra[{c.stream->id, static_cast<int>(c.direction)}] = {c.stream->id, extra};
      },
      [&](const PcapNotice& n) {
        json where = {{"stream", n.stream->id}, {"direction", dir_name(n.direction)}};
        if (n.packet != 0) where["packet"] = n.packet;  // none at the end of the file
        if (n.bytes_skipped) {
          decoder_for(*n.stream, n.direction)
              .lose_sync("stream " + std::to_string(n.stream->id) + " " + dir_name(n.direction) + ": ", n.message, where,
                         n.at_end);
          return;
        }
        if (js) {
          where["message"] = n.message;
          js->notice(where);
        } else {
          out << "stream " << n.stream->id << " " << dir_name(n.direction) << ": notice: " << n.message << "\n";
        }
      });
  if (!res) {
    err << kPrefix << res.error().message << "\n";
    return 2;
  }
  std::size_t frames = 0, errors = 0, anomalies = 0;
  std::string first_error;
  for (auto& [key, dec] : decoders) {
    auto it = last_extra.find(key);
    if (it != last_extra.end()) {
      const int stream = it->second.first;
      dec->finish("stream " + std::to_string(stream) + " " + dir_name(static_cast<PcapDirection>(key.second)) + ": ",
                  it->second.second);
    }
    frames += dec->frames();
    errors += dec->errors();
    anomalies += dec->anomalies();
    if (first_error.empty()) first_error = dec->first_error();
  }
  if (!res->read_error.empty()) {
    // A capture cut short (tcpdump stopped mid-write): what it holds before
    // the damage is decoded above; the damage is an error, not unreadable input.
    const std::string msg = res->read_error + "; the packets before it are decoded";
    ++errors;
    if (first_error.empty()) first_error = msg;
    if (js) {
      js->error({{"kind", "pcap-read"}, {"detail", msg}});
    } else {
      out << "error: pcap-read: " << msg << "\n";
    }
  }
  // No stream on the port, but TCP on others: the port asked for is likely
  // not the one the capture's sessions used (a lab MTA on another port).
  std::string elsewhere;
  if (res->streams.empty() && !res->other_ports.empty()) {
    elsewhere = "TCP packets on other ports: ";
    for (std::size_t i = 0; i < res->other_ports.size(); ++i) {
      elsewhere += (i == 0 ? "" : ", ") + std::to_string(res->other_ports[i].first) + " (" +
                   std::to_string(res->other_ports[i].second) + ")";
    }
    elsewhere += "; choose one with --port";
  }
  if (js) {
    json streams = json::array();
    for (const auto& s : res->streams) {
      streams.push_back({{"id", s.id}, {"client", s.client}, {"server", s.server}, {"saw_syn", s.saw_syn}});
    }
    std::vector<std::pair<std::string, json>> tail = {{"packets", res->packets}, {"streams", streams}};
    if (!elsewhere.empty()) {
      json ports = json::array();
      for (const auto& [port, packets] : res->other_ports) ports.push_back({{"port", port}, {"packets", packets}});
      tail.emplace_back("other_ports", ports);
    }
    js->close(true, tail);
  } else {
    out << res->packets << " packets, " << res->streams.size() << " stream" << (res->streams.size() == 1 ? "" : "s")
        << " on port " << o.port << ", " << frames << " frames, " << anomalies << " anomal"
        << (anomalies == 1 ? "y" : "ies") << ", " << errors << " error" << (errors == 1 ? "" : "s") << "\n";
    if (!elsewhere.empty()) out << "notice: " << elsewhere << "\n";
  }
  return finish_status(errors, frames, first_error, err);
}

}  // namespace

int run_decode(const DecodeCmdOptions& o, std::istream& in, std::ostream& out, std::ostream& err) {
  const int modes = (!o.addresses.empty() ? 1 : 0) + (!o.pcap.empty() ? 1 : 0) + ((o.from_stdin || !o.hex.empty()) ? 1 : 0);
  if (modes == 0) {
    err << kPrefix << "nothing to decode: give hex frames, '-' for standard input, --address HEX or --pcap FILE\n";
    return 2;
  }
  if (modes > 1) {
    err << kPrefix << "give one of: hex frames, '-', --address, --pcap\n";
    return 2;
  }
  if (o.max_length < codec::kTpktMinLength || o.max_length > codec::kTpktMaxLength) {
    err << kPrefix << "--max-length " << o.max_length << " is outside 7..65535\n";
    return 2;
  }
  if (!o.addresses.empty()) return decode_addresses(o, out, err);
  if (!o.pcap.empty()) return decode_pcap(o, out, err);
  return decode_hex(o, in, out, err);
}

}  // namespace isoproxy
