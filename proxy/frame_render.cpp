#include "frame_render.h"

#include <cstdio>

#include "codec/text.h"

namespace isoproxy {

using codec::Bytes;
using codec::TpduType;
using nlohmann::json;

namespace {

constexpr std::size_t kTextDataPreview = 32;  // user data octets shown in text form

std::string hex_n(std::uint32_t v, int digits) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%0*X", digits, v);
  return buf;
}

json tsap_json(Bytes b) {
  const codec::TsapText t = codec::tsap_text(b);
  json j = {{"hex", t.hex}, {"length", b.size()}};
  if (t.printable) j["ascii"] = t.ascii;
  return j;
}

std::string tsap_line(Bytes b) {
  const codec::TsapText t = codec::tsap_text(b);
  std::string s = t.printable ? t.ascii + "  (hex " + t.hex + ")" : t.hex;
  s += "  [" + std::to_string(b.size()) + " octets]";
  return s;
}

std::string data_preview(Bytes b) {
  if (b.empty()) return "none";
  std::string s = std::to_string(b.size()) + " octets: " + codec::to_hex(b.first(std::min(b.size(), kTextDataPreview)));
  if (b.size() > kTextDataPreview) s += "...";
  return s;
}

// A parameter's value in words, where the code has a meaning for the type.
std::string param_value_text(TpduType type, const codec::Param& p) {
  namespace prm = codec::param;
  const bool conn = type == TpduType::kCR || type == TpduType::kCC;
  if (conn && p.code == prm::kTpduSize && p.value.size() == 1) {
    const auto octets = codec::tpdu_size_octets(p.value[0]);
    return (octets ? std::to_string(*octets) + " octets" : std::string("undefined")) + " (code " +
           hex_n(p.value[0], 2) + ")";
  }
  if (conn && (p.code == prm::kCallingTsap || p.code == prm::kCalledTsap)) return tsap_line(p.value);
  if (conn && p.code == prm::kAlternativeClasses) {
    std::string s;
    for (std::uint8_t c : p.value) s += (s.empty() ? "" : ", ") + std::to_string(c >> 4);
    return "classes " + s;
  }
  return p.value.empty() ? "(empty)" : codec::to_hex(p.value);
}

void line(std::string& out, int indent, std::string_view label, const std::string& value) {
  out.append(static_cast<std::size_t>(indent), ' ');
  out.append(label);
  if (label.size() < 16) out.append(16 - label.size(), ' ');
  else out.push_back(' ');
  out.append(value);
  out.push_back('\n');
}

}  // namespace

std::string tsap_display(Bytes b) { return codec::tsap_text(b).display(); }

json tpdu_json(const codec::Tpdu& t) {
  json j;
  j["type"] = codec::tpdu_type_name(t.type);
  j["name"] = codec::tpdu_type_long_name(t.type);
  j["li"] = t.li;
  j["code"] = t.code;
  j["format"] = codec::tpdu_format_name(t.format);
  if (t.type == TpduType::kCR || t.type == TpduType::kCC || t.type == TpduType::kAK || t.type == TpduType::kRJ) {
    j["cdt"] = t.cdt;
  }
  if (t.dst_ref) j["dst_ref"] = *t.dst_ref;
  if (t.src_ref) j["src_ref"] = *t.src_ref;
  if (t.class_option) {
    j["class"] = *t.class_option >> 4;
    j["options"] = *t.class_option & 0x0F;
  }
  if (t.reason) {
    j["reason"] = *t.reason;
    const auto n = codec::dr_reason_name(*t.reason);
    j["reason_name"] = n ? json(*n) : json(nullptr);
  }
  if (t.cause) {
    j["cause"] = *t.cause;
    const auto n = codec::er_cause_name(*t.cause);
    j["cause_name"] = n ? json(*n) : json(nullptr);
  }
  if (t.eot) j["eot"] = *t.eot;
  if (t.nr) j["nr"] = *t.nr;
  if (t.credit) j["credit"] = *t.credit;
  if (auto c = t.calling_tsap()) j["calling_tsap"] = tsap_json(*c);
  if (auto c = t.called_tsap()) j["called_tsap"] = tsap_json(*c);
  if (auto c = t.tpdu_size_code()) {
    j["tpdu_size_code"] = *c;
    const auto octets = codec::tpdu_size_octets(*c);
    j["tpdu_size"] = octets ? json(*octets) : json(nullptr);
  }
  json params = json::array();
  for (const codec::Param& p : t.params) {
    const auto name = codec::param_name(t.type, p.code);
    params.push_back({{"code", p.code},
                      {"name", name.empty() ? json(nullptr) : json(name)},
                      {"offset", p.offset},
                      {"value", codec::to_hex(p.value)}});
  }
  j["params"] = std::move(params);
  j["user_data"] = codec::to_hex(t.user_data);
  if (!t.trailing.empty()) j["trailing"] = codec::to_hex(t.trailing);
  return j;
}

json anomalies_json(const std::vector<codec::Anomaly>& a) {
  json arr = json::array();
  for (const auto& x : a) arr.push_back({{"kind", codec::anomaly_name(x.kind)}, {"detail", x.detail}});
  return arr;
}

json frame_json(const codec::Frame& f) {
  return {{"length", f.raw.size()},
          {"tpkt", {{"version", f.header.version}, {"reserved", f.header.reserved}, {"length", f.header.length}}},
          {"tpdu", tpdu_json(f.tpdu)},
          {"anomalies", anomalies_json(f.anomalies)},
          {"hex", codec::to_hex(f.raw)}};
}

json decode_error_json(const codec::DecodeError& e) {
  return {{"kind", codec::decode_error_name(e.kind)}, {"offset", e.offset}, {"detail", e.detail}};
}

std::string tpdu_text(const codec::Tpdu& t, int indent) {
  std::string out;
  line(out, indent, "LI", std::to_string(t.li));
  std::string code = hex_n(t.code, 2) + " (" + std::string(codec::tpdu_type_name(t.type));
  if (t.type == TpduType::kCR || t.type == TpduType::kCC || ((t.type == TpduType::kAK || t.type == TpduType::kRJ) &&
                                                               t.format != codec::TpduFormat::kExtended)) {
    code += ", credit " + std::to_string(t.cdt);
  }
  code += ", " + std::string(codec::tpdu_format_name(t.format)) + " format)";
  line(out, indent, "code", code);
  if (t.dst_ref) line(out, indent, "DST-REF", hex_n(*t.dst_ref, 4));
  if (t.src_ref) line(out, indent, "SRC-REF", hex_n(*t.src_ref, 4));
  if (t.class_option) {
    line(out, indent, "class", std::to_string(*t.class_option >> 4) + " (option bits " + hex_n(*t.class_option & 0x0F, 2) + ")");
  }
  if (t.reason) {
    const auto n = codec::dr_reason_name(*t.reason);
    line(out, indent, "reason", hex_n(*t.reason, 2) + " " + (n ? std::string(*n) : std::string("(unknown)")));
  }
  if (t.cause) {
    const auto n = codec::er_cause_name(*t.cause);
    line(out, indent, "cause", std::to_string(*t.cause) + " " + (n ? std::string(*n) : std::string("(unknown)")));
  }
  if (t.eot) {
    const bool ed = t.type == codec::TpduType::kED;
    line(out, indent, "EOT",
         *t.eot ? (ed ? "yes (last ED of the expedited TSDU)" : "yes (last DT of the TSDU)")
                : (ed ? "no (more EDs follow)" : "no (more DTs follow)"));
  }
  if (t.nr) line(out, indent, t.type == TpduType::kDT || t.type == TpduType::kED ? "TPDU-NR" : "YR-TU-NR", std::to_string(*t.nr));
  if (t.credit) line(out, indent, "credit", std::to_string(*t.credit));
  // Named summary lines first (what operators look for), then every parameter in wire order.
  if (auto c = t.calling_tsap()) line(out, indent, "calling TSAP", tsap_line(*c));
  if (auto c = t.called_tsap()) line(out, indent, "called TSAP", tsap_line(*c));
  if (auto c = t.tpdu_size_code()) {
    const auto octets = codec::tpdu_size_octets(*c);
    line(out, indent, "TPDU size", (octets ? std::to_string(*octets) : std::string("undefined")) + " (code " + hex_n(*c, 2) + ")");
  }
  // Parameter order matters to some peers (gos7, snap7 clients): list it, then
  // detail every parameter not already shown above.
  if (!t.params.empty()) {
    std::string order;
    for (const codec::Param& p : t.params) {
      const auto name = codec::param_name(t.type, p.code);
      order += (order.empty() ? "" : ", ") + hex_n(p.code, 2).substr(2) + " " + std::string(name.empty() ? "unknown" : name);
    }
    line(out, indent, "parameters", order);
  }
  const bool conn = t.type == TpduType::kCR || t.type == TpduType::kCC;
  for (const codec::Param& p : t.params) {
    const bool shown = conn && (p.code == codec::param::kCallingTsap || p.code == codec::param::kCalledTsap ||
                                (p.code == codec::param::kTpduSize && p.value.size() == 1));
    if (shown && &p == t.find(p.code)) continue;  // a duplicate is detailed anyway
    const auto name = codec::param_name(t.type, p.code);
    line(out, indent, "param " + hex_n(p.code, 2).substr(2),
         std::string(name.empty() ? "unknown" : name) + ": " + param_value_text(t.type, p));
  }
  if (t.type == TpduType::kCR || t.type == TpduType::kCC || t.type == TpduType::kDR || t.type == TpduType::kDT ||
      t.type == TpduType::kED) {
    line(out, indent, "user data", data_preview(t.user_data));
  }
  if (!t.trailing.empty()) line(out, indent, "trailing", data_preview(t.trailing));
  return out;
}

std::string anomalies_text(const std::vector<codec::Anomaly>& a, int indent) {
  std::string out;
  for (const auto& x : a) {
    out.append(static_cast<std::size_t>(indent), ' ');
    out += "anomaly: " + std::string(codec::anomaly_name(x.kind)) + ": " + x.detail + "\n";
  }
  return out;
}

std::string frame_text(const codec::Frame& f, int indent) {
  std::string out;
  line(out, indent, "TPKT", "version " + std::to_string(f.header.version) + ", reserved " + hex_n(f.header.reserved, 2) +
                                ", length " + std::to_string(f.header.length));
  out += tpdu_text(f.tpdu, indent);
  out += anomalies_text(f.anomalies, indent);
  return out;
}

}  // namespace isoproxy
