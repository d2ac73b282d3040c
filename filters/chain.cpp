#include "filters/chain.h"

namespace isoproxy::filters {

Status<> ChainFrame::replace(std::vector<std::uint8_t> bytes) {
  if (bytes.size() > max_length_) {
    return unexpected(Error{"replace-too-long", "the frame would be " + std::to_string(bytes.size()) +
                                                    " octets, over the listener's max_frame (" +
                                                    std::to_string(max_length_) + ")"});
  }
  auto decoded = std::make_unique<codec::Frame>();
  std::vector<std::uint8_t> owned = std::move(bytes);
  auto f = codec::decode_frame(owned, {}, max_length_);
  if (!f) return unexpected(Error{"replace-invalid", "replacement frame does not decode: " + f.error().detail});
  *decoded = std::move(*f);  // its spans point into `owned`, whose buffer moves with it below
  owned_ = std::move(owned);
  owned_decoded_ = std::move(decoded);
  bytes_ = codec::MutableBytes(owned_);
  decoded_ = owned_decoded_.get();
  return Ok{};
}

FilterChain::FilterChain(const FactoryList& factories) {
  filters_.reserve(factories.size());
  for (const auto& f : factories) {
    filters_.push_back(f->create());
    needs_data_phase_ = needs_data_phase_ || f->needs_data_phase();
    keeps_session_state_ = keeps_session_state_ || f->keeps_session_state();
    routes_ = routes_ || f->routes();
    guards_cr_ = guards_cr_ || f->guards_cr();
  }
}

void FilterChain::resume_after_handshake() {
  for (auto& f : filters_) f->resume_after_handshake();
}

Verdict FilterChain::run(FilterContext& ctx, ChainFrame& frame) {
  const bool forward = frame.direction() == Direction::kToUpstream;
  const std::size_t n = filters_.size();
  for (std::size_t i = 0; i < n; ++i) {
    Filter& f = *filters_[forward ? i : n - 1 - i];
    const Verdict v = f.on_frame(ctx, frame);
    if (v != Verdict::kContinue) return v;
  }
  return Verdict::kContinue;
}

}  // namespace isoproxy::filters
