// libFuzzer target over the whole codec path a peer's bytes take: the TPKT
// framer at arbitrary splits, the X.224 decoder (relay and strict modes), the
// re-encoder (must be byte-exact), a length-changing edit (must decode again),
// and the text/JSON renderers. Any crash, sanitizer report or abort() fails.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "codec/encode.h"
#include "codec/tpkt.h"
#include "codec/x224.h"
#include "frame_render.h"

namespace {

using namespace isoproxy::codec;

void check_frame(Bytes raw) {
  for (bool strict : {false, true}) {
    DecodeOptions o;
    o.strict = strict;
    auto f = decode_frame(raw, o);
    if (!f) continue;
    (void)isoproxy::frame_text(*f, 2);
    (void)isoproxy::frame_json(*f).dump();

    // Invariant: an unedited decode re-encodes byte-exact.
    const OwnedTpdu owned = OwnedTpdu::from(f->tpdu);
    auto again = encode_frame(f->header.reserved, owned);
    if (!again || *again != std::vector<std::uint8_t>(raw.begin(), raw.end())) std::abort();

    // Invariant: a length-changing edit that encodes also decodes, with the edit in it.
    if (f->tpdu.type == TpduType::kCR || f->tpdu.type == TpduType::kCC) {
      OwnedTpdu edited = owned;
      static const std::uint8_t kTsap[] = {'R', 'E', 'M', 'O', 'T', 'E', 'M', 'T', 'A'};
      edited.set_param(param::kCalledTsap, kTsap);
      auto bytes = encode_frame(0, edited);
      if (bytes) {
        auto f2 = decode_frame(*bytes, o);
        if (!f2) std::abort();
        auto called = f2->tpdu.called_tsap();
        if (!called || called->size() != sizeof kTsap) std::abort();
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  // First byte: split stride for the framer (1..256), and the max length mode.
  const std::size_t stride = static_cast<std::size_t>(data[0]) + 1;
  const std::size_t max_len = (data[0] & 1) ? kTpktMaxLength : 2048;
  Bytes rest(data + 1, size - 1);

  TpktFramer framer(max_len);
  std::size_t total_frames = 0;
  while (!rest.empty()) {
    Bytes chunk = rest.first(std::min(stride, rest.size()));
    rest = rest.subspan(chunk.size());
    for (;;) {
      auto r = framer.next(chunk);
      if (r.status != TpktFramer::kFrame) break;
      if (r.frame.size() < kTpktMinLength || r.frame.size() > max_len) std::abort();
      ++total_frames;
      check_frame(r.frame);
    }
    if (framer.failed()) break;
  }
  // The same bytes as a bare TPDU (the cotp-only path).
  std::vector<Anomaly> anomalies;
  auto t = decode_tpdu(Bytes(data + 1, size - 1), {}, &anomalies);
  if (t) (void)isoproxy::tpdu_text(*t, 0);
  return 0;
}
