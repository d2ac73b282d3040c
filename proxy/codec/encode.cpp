#include "codec/encode.h"

#include <algorithm>
#include <string>

namespace isoproxy::codec {

bool replace_param_value_in_place(MutableBytes tpkt_bytes, const Param& p, Bytes value) {
  if (value.size() != p.value.size()) return false;
  const std::size_t at = kTpktHeaderSize + p.offset + 2;
  if (at + value.size() > tpkt_bytes.size()) return false;
  std::copy(value.begin(), value.end(), tpkt_bytes.begin() + static_cast<std::ptrdiff_t>(at));
  return true;
}

OwnedTpdu OwnedTpdu::from(const Tpdu& t) {
  OwnedTpdu o;
  o.code = t.code;
  const Bytes fixed = t.bytes.subspan(2, t.fixed_length() - 1);
  o.fixed.assign(fixed.begin(), fixed.end());
  o.params.reserve(t.params.size());
  for (const Param& p : t.params) o.params.push_back({p.code, {p.value.begin(), p.value.end()}});
  const Bytes tail = t.user_data.empty() ? t.trailing : t.user_data;
  o.data.assign(tail.begin(), tail.end());
  return o;
}

OwnedParam* OwnedTpdu::find(std::uint8_t c) {
  for (OwnedParam& p : params) {
    if (p.code == c) return &p;
  }
  return nullptr;
}

void OwnedTpdu::set_param(std::uint8_t c, Bytes value) {
  if (OwnedParam* p = find(c)) {
    p->value.assign(value.begin(), value.end());
  } else {
    params.push_back({c, {value.begin(), value.end()}});
  }
}

std::size_t OwnedTpdu::remove_param(std::uint8_t c) {
  const auto before = params.size();
  std::erase_if(params, [c](const OwnedParam& p) { return p.code == c; });
  return before - params.size();
}

Result<std::vector<std::uint8_t>> OwnedTpdu::encode() const {
  std::size_t li = 1 + fixed.size();
  for (const OwnedParam& p : params) {
    if (p.value.size() > 255) {
      return unexpected(Error{"param-too-long", "parameter value of " + std::to_string(p.value.size()) + " octets (at most 255)"});
    }
    li += 2 + p.value.size();
  }
  if (li > 254) {
    return unexpected(Error{"li-too-long", "TPDU header of " + std::to_string(li) + " octets (LI at most 254)"});
  }
  std::vector<std::uint8_t> out;
  out.reserve(1 + li + data.size());
  out.push_back(static_cast<std::uint8_t>(li));
  out.push_back(code);
  out.insert(out.end(), fixed.begin(), fixed.end());
  for (const OwnedParam& p : params) {
    out.push_back(p.code);
    out.push_back(static_cast<std::uint8_t>(p.value.size()));
    out.insert(out.end(), p.value.begin(), p.value.end());
  }
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

Result<std::vector<std::uint8_t>> encode_frame(std::uint8_t reserved, const OwnedTpdu& t, std::size_t max_length) {
  auto body = t.encode();
  if (!body) return unexpected(body.error());
  const std::size_t len = kTpktHeaderSize + body->size();
  if (len > max_length) {
    return unexpected(Error{"tpkt-too-long", "TPKT of " + std::to_string(len) + " octets (at most " +
                                                 std::to_string(max_length) + ")"});
  }
  std::vector<std::uint8_t> out;
  out.reserve(len);
  out.push_back(kTpktVersion);
  out.push_back(reserved);
  out.push_back(static_cast<std::uint8_t>(len >> 8));
  out.push_back(static_cast<std::uint8_t>(len & 0xFF));
  out.insert(out.end(), body->begin(), body->end());
  return out;
}

}  // namespace isoproxy::codec
